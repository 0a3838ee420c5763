"""Deterministic synthetic bilingual (English + Simplified Chinese) data for demos and tests.

Why synthetic?  The lmforge demo and test-suite must never download anything, and they must run
on a laptop CPU in minutes.  Real corpora are too large and too varied for a tiny model (hidden
size 128, two layers, ~4k byte-level BPE vocabulary) to show a measurable effect in that time.
This module therefore generates, in pure Python (stdlib only, ``random.Random(seed)``), data that
is small, reproducible and *learnable*:

* a pretraining corpus (:func:`make_corpus`) whose documents mix

  - factual prose that carries the knowledge the tasks need ("The number 42 is written
    forty-two.", "57 is an odd number because it ends in 7.", "数字42写作四十二。", "57是奇数。"),
  - short restaurant / hotel / show reviews built from the same positive and negative word lists
    that the sentiment tasks use, plus sentences that say which words are positive or negative,
  - filler prose about weather, travel, cooking, school and city life, from templates with many
    slot fillers so that the text is not trivially repetitive;

* instruction tasks in alpaca form (:func:`make_tasks`) with short (one to three word) answers
  that follow simple rules, so that after pretraining a LoRA fine-tune mostly has to learn the
  question/answer format and exact-match accuracy on held-out examples can rise from ~0 to well
  above 50%:

  ==================  =============================================  =================
  task                example instruction                            answer
  ==================  =============================================  =================
  ``en_parity``       Is 348 odd or even?                            even / odd
  ``en_number_words`` Write 42 in words.                             forty-two
  ``en_sentiment``    What is the sentiment of this review: ...      positive/negative
  ``zh_numerals``     用汉字写出数字42。                               四十二
  ``zh_sentiment``    判断这句评论的情感：这家餐厅的菜很好吃。         正面 / 负面
  ``zh_parity``       数字57是奇数还是偶数？                          奇数 / 偶数
  ==================  =============================================  =================

Each task uses four instruction templates so that the model learns the task rather than one
string.  Labels of the binary tasks are exactly balanced, and the number tasks sample numbers
without replacement whenever the requested count fits in the number range.

Everything is deterministic: the same ``seed`` gives identical output, a different seed gives
different output.  :func:`write_demo_data` writes both sets as UTF-8 JSON Lines.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from string import Formatter

__all__ = [
    "TASKS",
    "make_corpus",
    "make_tasks",
    "number_to_chinese",
    "number_to_english",
    "write_demo_data",
]

TASKS: tuple[str, ...] = (
    "en_parity",
    "en_number_words",
    "en_sentiment",
    "zh_numerals",
    "zh_sentiment",
    "zh_parity",
)
"""Names of the instruction tasks produced by :func:`make_tasks`, in output-id order."""

_TASK_LANG = {name: name[:2] for name in TASKS}

# --------------------------------------------------------------------------------------------
# Number rendering
# --------------------------------------------------------------------------------------------

_EN_ONES = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
_EN_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_ZH_DIGITS = "零一二三四五六七八九"


def number_to_english(n: int) -> str:
    """Return the English words for ``0 <= n <= 99``, e.g. ``42 -> "forty-two"``."""
    if not 0 <= n <= 99:
        raise ValueError(f"number_to_english supports 0..99, got {n}")
    if n < 20:
        return _EN_ONES[n]
    tens, ones = divmod(n, 10)
    return _EN_TENS[tens] + (f"-{_EN_ONES[ones]}" if ones else "")


def number_to_chinese(n: int) -> str:
    """Return the Chinese numeral for ``0 <= n <= 99``, e.g. ``0 -> "零"``, ``12 -> "十二"``."""
    if not 0 <= n <= 99:
        raise ValueError(f"number_to_chinese supports 0..99, got {n}")
    if n < 10:
        return _ZH_DIGITS[n]
    tens, ones = divmod(n, 10)
    head = "十" if tens == 1 else _ZH_DIGITS[tens] + "十"
    return head + (_ZH_DIGITS[ones] if ones else "")


# --------------------------------------------------------------------------------------------
# Template filling
# --------------------------------------------------------------------------------------------

_FIELDS_CACHE: dict[str, tuple[str, ...]] = {}


def _fields(template: str) -> tuple[str, ...]:
    fields = _FIELDS_CACHE.get(template)
    if fields is None:
        # dict.fromkeys keeps first-seen order (a set would depend on PYTHONHASHSEED).
        fields = tuple(dict.fromkeys(f for _, f, _, _ in Formatter().parse(template) if f))
        _FIELDS_CACHE[template] = fields
    return fields


def _fill(template: str, rng: random.Random, pools: dict[str, Sequence[str]], **fixed: str) -> str:
    """Fill ``{slot}`` fields of ``template`` from ``fixed`` or a random choice from ``pools``."""
    values = {f: fixed[f] if f in fixed else rng.choice(pools[f]) for f in _fields(template)}
    return template.format(**values)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


# --------------------------------------------------------------------------------------------
# Reviews (shared by the corpus and the sentiment tasks)
# --------------------------------------------------------------------------------------------

# category -> (nouns, places, positive adjectives, negative adjectives)
_EN_REVIEW_CATS: dict[str, tuple[tuple[str, ...], ...]] = {
    "food": (
        ("soup", "pizza", "bread", "coffee", "curry", "salad", "cake", "steak", "pasta"),
        ("restaurant", "cafe", "diner", "bakery", "bistro"),
        ("delicious", "wonderful", "fresh", "tasty", "excellent"),
        ("awful", "bland", "stale", "greasy", "terrible"),
    ),
    "staff": (
        ("waiter", "waitress", "host", "driver", "guide", "receptionist", "manager"),
        ("restaurant", "hotel", "cafe", "shop", "tour company"),
        ("kind", "friendly", "helpful", "polite", "patient"),
        ("rude", "unhelpful", "careless", "impatient", "lazy"),
    ),
    "room": (
        ("room", "bed", "bathroom", "lobby", "kitchen", "balcony"),
        ("hotel", "hostel", "inn", "guesthouse"),
        ("clean", "cozy", "quiet", "spacious", "comfortable"),
        ("dirty", "noisy", "cramped", "shabby", "smelly"),
    ),
    "show": (
        ("film", "play", "concert", "show", "performance", "musical"),
        ("cinema", "theater", "festival", "club"),
        ("exciting", "brilliant", "moving", "amazing", "fantastic"),
        ("boring", "dull", "disappointing", "horrible", "tedious"),
    ),
}
_EN_REVIEW_TEMPLATES = (
    "The {noun} was {adj}.",
    "The {noun} was {adj} and the {noun2} was {adj2}.",
    "I thought the {noun} was {adj}.",
    "Honestly, the {noun} at this {place} was {adj}.",
    "We found the {noun} really {adj}.",
    "The {noun} at the {place} was {adj}, {closing}.",
    "What a {adj} {noun}!",
)
_EN_CLOSINGS = {
    True: ("we will come back", "I would recommend it", "we loved it", "it made our day"),
    False: ("we will not return", "I would not recommend it", "we regret going", "what a waste"),
}

_ZH_REVIEW_CATS: dict[str, tuple[tuple[str, ...], ...]] = {
    "food": (
        ("菜", "汤", "面条", "饺子", "蛋糕", "咖啡", "烤鸭", "包子"),
        ("餐厅", "饭馆", "咖啡馆", "面包店", "小吃店"),
        ("好吃", "美味", "新鲜", "可口"),
        ("难吃", "油腻", "糟糕", "难闻"),
    ),
    "staff": (
        ("服务员", "老板", "导游", "司机", "前台", "店员"),
        ("餐厅", "酒店", "旅行社", "商店", "宾馆"),
        ("热情", "友好", "耐心", "周到"),
        ("冷淡", "粗鲁", "傲慢", "马虎"),
    ),
    "room": (
        ("房间", "床", "卫生间", "大堂", "窗户", "阳台"),
        ("酒店", "宾馆", "民宿", "旅馆"),
        ("干净", "舒适", "安静", "宽敞"),
        ("肮脏", "吵闹", "破旧", "拥挤"),
    ),
    "show": (
        ("电影", "演出", "话剧", "节目", "音乐会", "表演"),
        ("电影院", "剧院", "剧场", "俱乐部"),
        ("精彩", "有趣", "感人", "出色"),
        ("无聊", "乏味", "拖沓", "差劲"),
    ),
}
_ZH_REVIEW_TEMPLATES = (
    "这家{place}的{noun}很{adj}。",
    "{noun}非常{adj}，{closing}。",
    "我觉得这里的{noun}特别{adj}。",
    "这家{place}的{noun}真{adj}！",
    "这次去的{place}，{noun}很{adj}，{noun2}也很{adj2}。",
    "{place}里的{noun}太{adj}了。",
)
_ZH_CLOSINGS = {
    True: ("我很满意", "下次还会再来", "强烈推荐", "大家都很开心"),
    False: ("我很失望", "再也不来了", "真后悔来这里", "浪费了一个晚上"),
}


def _en_review(rng: random.Random, positive: bool) -> str:
    cat = rng.choice(tuple(_EN_REVIEW_CATS))
    nouns, places, pos, neg = _EN_REVIEW_CATS[cat]
    adjs = pos if positive else neg
    noun, noun2 = rng.sample(nouns, 2)
    adj, adj2 = rng.sample(adjs, 2)
    template = rng.choice(_EN_REVIEW_TEMPLATES)
    if template.startswith("What a"):
        article = "an" if adj[0] in "aeiou" else "a"
        return f"What {article} {adj} {noun}!"
    return _fill(
        template,
        rng,
        {"place": places, "closing": _EN_CLOSINGS[positive]},
        noun=noun,
        noun2=noun2,
        adj=adj,
        adj2=adj2,
    )


def _zh_review(rng: random.Random, positive: bool) -> str:
    cat = rng.choice(tuple(_ZH_REVIEW_CATS))
    nouns, places, pos, neg = _ZH_REVIEW_CATS[cat]
    adjs = pos if positive else neg
    noun, noun2 = rng.sample(nouns, 2)
    adj, adj2 = rng.sample(adjs, 2)
    return _fill(
        rng.choice(_ZH_REVIEW_TEMPLATES),
        rng,
        {"place": places, "closing": _ZH_CLOSINGS[positive]},
        noun=noun,
        noun2=noun2,
        adj=adj,
        adj2=adj2,
    )


def _en_sentiment_fact(rng: random.Random) -> str:
    positive = rng.random() < 0.5
    nouns, _, pos, neg = _EN_REVIEW_CATS[rng.choice(tuple(_EN_REVIEW_CATS))]
    label = "positive" if positive else "negative"
    adj = rng.choice(pos if positive else neg)
    a1, a2 = rng.sample(pos if positive else neg, 2)
    return rng.choice(
        (
            f'The word "{adj}" is a {label} word.',
            f"A review that says the {rng.choice(nouns)} was {adj} is {label}.",
            f"Words like {a1} and {a2} show a {label} opinion.",
            f"Saying that the {rng.choice(nouns)} was {adj} expresses a {label} sentiment.",
        )
    )


def _zh_sentiment_fact(rng: random.Random) -> str:
    positive = rng.random() < 0.5
    nouns, _, pos, neg = _ZH_REVIEW_CATS[rng.choice(tuple(_ZH_REVIEW_CATS))]
    label = "正面" if positive else "负面"
    adj = rng.choice(pos if positive else neg)
    a1, a2 = rng.sample(pos if positive else neg, 2)
    return rng.choice(
        (
            f"“{adj}”是一个{label}的词。",
            f"说{rng.choice(nouns)}很{adj}的评论是{label}的。",
            f"像“{a1}”和“{a2}”这样的词表达{label}的情感。",
            f"如果评论说{rng.choice(nouns)}{adj}，那么它的情感是{label}。",
        )
    )


# --------------------------------------------------------------------------------------------
# Number facts (the knowledge behind the number tasks)
# --------------------------------------------------------------------------------------------


def _en_number_fact(rng: random.Random) -> str:
    if rng.random() < 0.5:
        n = rng.randrange(100)
        w = number_to_english(n)
        return rng.choice(
            (
                f"The number {n} is written {w}.",
                f"In words, {n} is {w}.",
                f"{_cap(w)} is written as {n}.",
                f"We spell {n} as {w}.",
                f"When you write {n} in words, you get {w}.",
            )
        )
    n = rng.randrange(1000)
    d = n % 10
    kind = "even" if d % 2 == 0 else "odd"
    return rng.choice(
        (
            f"{n} is an {kind} number because it ends in {d}.",
            f"{n} is {kind}.",
            f"The number {n} is {kind}, since its last digit is {d}.",
            f"Any number that ends in {d}, such as {n}, is {kind}.",
            f"If you ask whether {n} is odd or even, the answer is {kind}.",
        )
    )


def _zh_number_fact(rng: random.Random) -> str:
    if rng.random() < 0.5:
        n = rng.randrange(100)
        w = number_to_chinese(n)
        return rng.choice(
            (
                f"数字{n}写作{w}。",
                f"{n}用汉字写作{w}。",
                f"{w}就是{n}。",
                f"把{n}写成汉字是{w}。",
                f"阿拉伯数字{n}对应的汉字是{w}。",
            )
        )
    n = rng.randrange(1000)
    d = n % 10
    kind = "偶数" if d % 2 == 0 else "奇数"
    return rng.choice(
        (
            f"{n}是{kind}。",
            f"{n}是{kind}，因为它的个位是{d}。",
            f"数字{n}的个位数是{d}，所以它是{kind}。",
            f"个位是{d}的数都是{kind}，比如{n}。",
            f"问{n}是奇数还是偶数，答案是{kind}。",
        )
    )


# --------------------------------------------------------------------------------------------
# Filler prose
# --------------------------------------------------------------------------------------------


def _opts(joined: str) -> tuple[str, ...]:
    """Split a ``|``-separated list of slot fillers (kept compact for readability)."""
    return tuple(joined.split("|"))


_EN_POOLS: dict[str, Sequence[str]] = {
    "name": _opts(
        "Anna|Ben|Clara|David|Emma|Frank|Grace|Henry|Iris|Jack|Lucy|Mark|Nina|Oscar|Paul|Rosa|Sam|"
        "Tina|Victor|Zoe"
    ),
    "city": _opts(
        "London|Paris|Tokyo|Beijing|Shanghai|Boston|Sydney|Toronto|Madrid|Cairo|Berlin|Rome|Seoul|"
        "Lima|Oslo|Dublin"
    ),
    "day": _opts("Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday"),
    "season": _opts("spring|summer|autumn|winter"),
    "sky": _opts("grey|bright blue|cloudy|clear|dark|pale|stormy|misty"),
    "weather": _opts(
        "it rained all afternoon|a cold wind blew from the north|the sun was warm|"
        "snow fell on the roofs|a light fog covered the river|thunder rolled at night|"
        "the air was dry and hot|a gentle breeze came from the sea"
    ),
    "people": _opts("children|old friends|students|tourists|neighbors|workers|families|runners"),
    "outdoor": _opts(
        "walked in the park|stayed at home|played football|sat by the window|went to the market|"
        "rode their bikes|read in the library|fed the ducks"
    ),
    "transport": _opts("train|bus|plane|ferry|car|bike|night train|boat"),
    "sight": _opts(
        "the old bridge|a small museum|the harbor|the central square|a quiet temple|the city walls|"
        "a busy night market|the botanical garden"
    ),
    "hours": _opts("two|three|five|six|eight|ten|twelve"),
    "item": _opts("a map|an umbrella|a camera|some snacks|a notebook|warm socks"),
    "dish": _opts(
        "tomato soup|fried rice|vegetable curry|apple pie|noodle soup|roast chicken|bean stew|"
        "banana bread|dumplings|a green salad"
    ),
    "ingredient": _opts(
        "onions|garlic|carrots|potatoes|rice|eggs|butter|fresh herbs|tomatoes|ginger|mushrooms|"
        "lemons"
    ),
    "verb_cook": _opts("chop|slice|boil|fry|bake|stir|mix|roast"),
    "minutes": _opts("five|ten|fifteen|twenty|thirty|forty"),
    "subject": _opts("math|history|music|science|geography|art|reading|chemistry|biology|English"),
    "school_event": _opts(
        "a spelling test|a science fair|a school trip|a long exam|a music concert|sports day|"
        "a class play|a reading contest"
    ),
    "teacher_did": _opts(
        "explained the lesson slowly|drew a map on the board|asked many questions|"
        "gave us extra homework|told a funny story|showed a short video"
    ),
    "city_place": _opts(
        "the subway|the main street|the shopping mall|the bus station|the bakery|the corner shop|"
        "the public library|the riverside path"
    ),
    "city_thing": _opts(
        "traffic|street lights|tall buildings|small cafes|street music|busy crowds|new bike lanes|"
        "food stalls"
    ),
    "time": _opts(
        "early in the morning|at noon|in the evening|late at night|after lunch|before sunrise|"
        "on the weekend"
    ),
    "feeling": _opts("happy|tired|calm|curious|excited|sleepy|relaxed|busy"),
}
_EN_FILLER = (
    # weather
    "On {day} the sky over {city} was {sky}, and {weather}.",
    "In {season}, {weather} in {city}.",
    "Because {weather}, the {people} {outdoor}.",
    "The news said that on {day} {weather}.",
    "{name} likes {season} best, when {weather}.",
    # travel
    "{name} took the {transport} to {city} and visited {sight}.",
    "The trip from {city} to the coast took {hours} hours by {transport}.",
    "Before the journey, {name} packed {item} and {item2}.",
    "In {city}, the {people} walked to {sight} {time}.",
    "{name} says the best way to see {city} is by {transport}.",
    # cooking
    "To make {dish}, {verb_cook} the {ingredient} and add some {ingredient2}.",
    "{name} cooked {dish} for dinner {time}.",
    "Let the {ingredient} cook for {minutes} minutes before you add the {ingredient2}.",
    "My grandmother always made {dish} with {ingredient} and {ingredient2}.",
    "{name} learned to {verb_cook} {ingredient} from a cooking show.",
    # school
    "On {day} our class had {school_event}.",
    "The {subject} teacher {teacher_did}.",
    "{name} studied {subject} {time} and felt {feeling}.",
    "After {school_event}, the students were {feeling}.",
    "{name} is good at {subject} but finds {subject2} hard.",
    # city life
    "{city} is full of {city_thing} and {city_thing2}.",
    "{name} waits for a friend near {city_place} {time}.",
    "In {city}, {city_place} is crowded {time}.",
    "Life in {city} feels {feeling} when the {city_thing} fill the streets.",
    "Every {day}, {name} walks past {city_place} on the way to work.",
)

_ZH_POOLS: dict[str, Sequence[str]] = {
    "name": _opts(
        "小明|小红|李华|王芳|张伟|刘洋|陈静|赵磊|孙丽|周杰|吴敏|郑涛|林晓|黄蕾|高翔|马超"
    ),
    "city": _opts(
        "北京|上海|广州|成都|杭州|西安|南京|武汉|重庆|深圳|苏州|青岛|昆明|大连|厦门|长沙"
    ),
    "day": _opts("星期一|星期二|星期三|星期四|星期五|星期六|星期天"),
    "season": _opts("春天|夏天|秋天|冬天"),
    "weather": _opts(
        "下了一整天的雨|刮起了大风|阳光很温暖|下起了小雪|河面上起了薄雾|晚上打雷了|天气又干又热|"
        "海边吹来一阵微风"
    ),
    "people": _opts("孩子们|老朋友们|学生们|游客们|邻居们|工人们|一家人"),
    "outdoor": _opts(
        "在公园散步|待在家里|去踢足球|坐在窗边看书|去菜市场买菜|骑自行车出门|去图书馆看书|"
        "在湖边喂鸭子"
    ),
    "transport": _opts("火车|公交车|飞机|轮船|汽车|自行车|高铁|地铁"),
    "sight": _opts(
        "古老的石桥|一座小博物馆|港口|市中心广场|一座安静的寺庙|古城墙|热闹的夜市|植物园"
    ),
    "hours": _opts("两|三|五|六|八|十|十二"),
    "item": _opts("地图|雨伞|相机|零食|笔记本|厚袜子|充电器"),
    "dish": _opts(
        "西红柿鸡蛋汤|蛋炒饭|红烧肉|麻婆豆腐|牛肉面|饺子|宫保鸡丁|酸辣土豆丝|清蒸鱼|小米粥"
    ),
    "ingredient": _opts("洋葱|大蒜|胡萝卜|土豆|米饭|鸡蛋|猪肉|青菜|西红柿|生姜|蘑菇|豆腐"),
    "verb_cook": _opts("切|煮|炒|蒸|炸|拌|炖|烤"),
    "minutes": _opts("五|十|十五|二十|三十|四十"),
    "subject": _opts("数学|历史|音乐|科学|地理|美术|语文|化学|生物|英语"),
    "school_event": _opts("听写测验|科技节|春游|期末考试|音乐会|运动会|班级话剧|朗读比赛"),
    "teacher_did": _opts(
        "讲课讲得很慢|在黑板上画了一张地图|问了很多问题|布置了很多作业|讲了一个有趣的故事|"
        "给我们放了一段短片"
    ),
    "city_place": _opts("地铁站|步行街|商场|公交车站|面包店|小卖部|图书馆|江边"),
    "city_thing": _opts("车流|路灯|高楼|小咖啡馆|街头音乐|人群|自行车道|小吃摊"),
    "time": _opts("一大早|中午|傍晚|深夜|午饭后|天亮前|周末"),
    "feeling": _opts("开心|疲惫|平静|好奇|兴奋|困倦|放松|忙碌"),
}
_ZH_FILLER = (
    # weather
    "{day}的{city}{weather}。",
    "去年{season}，{city}{weather}。",
    "因为{weather}，{people}{outdoor}。",
    "{name}记得那个{day}{weather}。",
    "{name}最喜欢{season}，那时候{weather}。",
    # travel
    "{name}坐{transport}去了{city}，参观了{sight}。",
    "从{city}到海边坐{transport}要{hours}个小时。",
    "出发前，{name}带上了{item}和{item2}。",
    "在{city}，{people}{time}去看了{sight}。",
    "{name}说游览{city}最好的方式是坐{transport}。",
    # cooking
    "做{dish}要先{verb_cook}{ingredient}，再放一些{ingredient2}。",
    "{name}{time}做了{dish}当晚饭。",
    "先把{ingredient}煮{minutes}分钟，再加入{ingredient2}。",
    "奶奶做{dish}的时候总是放{ingredient}和{ingredient2}。",
    "{name}从电视节目里学会了{verb_cook}{ingredient}。",
    # school
    "{day}我们班有{school_event}。",
    "{subject}老师{teacher_did}。",
    "{name}{time}学习{subject}，感觉很{feeling}。",
    "{school_event}结束后，同学们都很{feeling}。",
    "{name}擅长{subject}，但是觉得{subject2}很难。",
    # city life
    "{city}到处都是{city_thing}和{city_thing2}。",
    "{name}{time}在{city_place}等朋友。",
    "在{city}，{city_place}{time}总是很拥挤。",
    "{city}的{city_thing}让生活显得很{feeling}。",
    "每个{day}，{name}上班都会经过{city_place}。",
)


def _add_second_slots(pools: dict[str, Sequence[str]]) -> dict[str, Sequence[str]]:
    """Allow ``{slot2}`` fields to draw from the same pool as ``{slot}``."""
    out = dict(pools)
    for key, values in pools.items():
        out[key + "2"] = values
    return out


_EN_POOLS = _add_second_slots(_EN_POOLS)
_ZH_POOLS = _add_second_slots(_ZH_POOLS)


def _fill_filler(template: str, rng: random.Random, pools: dict[str, Sequence[str]]) -> str:
    # Draw paired slots (item/item2, ...) without replacement so they differ.
    fixed: dict[str, str] = {}
    fields = _fields(template)
    for f in fields:
        if f.endswith("2") and f[:-1] in fields:
            fixed[f[:-1]], fixed[f] = rng.sample(pools[f[:-1]], 2)
    return _cap(_fill(template, rng, pools, **fixed))


def _en_filler(rng: random.Random) -> str:
    return _fill_filler(rng.choice(_EN_FILLER), rng, _EN_POOLS)


def _zh_filler(rng: random.Random) -> str:
    return _fill_filler(rng.choice(_ZH_FILLER), rng, _ZH_POOLS)


# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------

_SentenceFn = Callable[[random.Random], str]

_GENERATORS: dict[str, dict[str, _SentenceFn]] = {
    "en": {
        "number": _en_number_fact,
        "review": lambda rng: _en_review(rng, rng.random() < 0.5),
        "sentiment_fact": _en_sentiment_fact,
        "filler": _en_filler,
    },
    "zh": {
        "number": _zh_number_fact,
        "review": lambda rng: _zh_review(rng, rng.random() < 0.5),
        "sentiment_fact": _zh_sentiment_fact,
        "filler": _zh_filler,
    },
}
# Document "profiles": relative weights of number facts, reviews, sentiment facts, filler.
_PROFILES: tuple[tuple[int, int, int, int], ...] = (
    (6, 1, 1, 2),  # mostly number knowledge
    (1, 6, 2, 1),  # mostly reviews
    (1, 1, 1, 6),  # mostly everyday prose
    (3, 3, 1, 3),  # a mix
)
_KINDS = ("number", "review", "sentiment_fact", "filler")


def make_corpus(n_docs: int, seed: int = 0) -> list[dict]:
    """Generate a deterministic bilingual pretraining corpus.

    Each document has 3-10 sentences mixing number facts (spelling and parity), reviews,
    sentences about which words are positive/negative, and everyday filler prose.  Exactly half
    of the documents (rounded) are English and the rest Simplified Chinese, in shuffled order.
    Chinese documents contain no spaces and use Chinese punctuation.

    Returns:
        A list of ``n_docs`` dicts ``{"id": "doc-000001", "text": str, "lang": "en" | "zh"}``
        with ids numbered from 1 in list order.
    """
    if n_docs < 0:
        raise ValueError(f"n_docs must be >= 0, got {n_docs}")
    rng = random.Random(f"lmforge-corpus-{seed}")
    langs = ["en"] * ((n_docs + 1) // 2) + ["zh"] * (n_docs // 2)
    rng.shuffle(langs)
    docs: list[dict] = []
    for i, lang in enumerate(langs, start=1):
        gens = _GENERATORS[lang]
        weights = rng.choice(_PROFILES)
        kinds = rng.choices(_KINDS, weights=weights, k=rng.randint(3, 10))
        sentences = [gens[k](rng) for k in kinds]
        text = (" " if lang == "en" else "").join(sentences)
        docs.append({"id": f"doc-{i:06d}", "text": text, "lang": lang})
    return docs


# --------------------------------------------------------------------------------------------
# Instruction tasks
# --------------------------------------------------------------------------------------------

_INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "en_parity": (
        "Is {x} odd or even?",
        "Is the number {x} even or odd?",
        "Tell me whether {x} is odd or even.",
        "{x}: odd or even?",
    ),
    "en_number_words": (
        "Write {x} in words.",
        "How do you write {x} in English words?",
        "Spell out the number {x}.",
        "What is {x} written in words?",
    ),
    "en_sentiment": (
        "What is the sentiment of this review: {x}",
        "Is this review positive or negative? {x}",
        "Classify the sentiment of the following review: {x}",
        "Review: {x} Sentiment?",
    ),
    "zh_numerals": (
        "用汉字写出数字{x}。",
        "数字{x}用汉字怎么写？",
        "请把{x}写成汉字。",
        "{x}的汉字写法是什么？",
    ),
    "zh_sentiment": (
        "判断这句评论的情感：{x}",
        "这条评论是正面还是负面？{x}",
        "请判断下面评论的情感倾向：{x}",
        "评论：{x}情感是正面还是负面？",
    ),
    "zh_parity": (
        "数字{x}是奇数还是偶数？",
        "{x}是奇数还是偶数？",
        "请判断{x}是奇数还是偶数。",
        "{x}是偶数还是奇数？",
    ),
}


def _number_prompts(
    values: Sequence[int], n_templates: int, count: int, rng: random.Random
) -> list[tuple[int, int]]:
    """Pick ``count`` (number, template index) pairs.

    Numbers are drawn without replacement while ``count <= len(values)``; beyond that every
    number is used again in further shuffled passes, each pass moving every number to its next
    template so that (number, template) pairs stay unique for ``n_templates`` passes.
    """
    if not values:
        return []
    base = {v: rng.randrange(n_templates) for v in values}
    out: list[tuple[int, int]] = []
    k = 0
    while len(out) < count:
        order = list(values)
        rng.shuffle(order)
        for v in order[: count - len(out)]:
            t = (base[v] + k) % n_templates if k < n_templates else rng.randrange(n_templates)
            out.append((v, t))
        k += 1
    return out


def _balanced_labels(count: int, rng: random.Random) -> list[bool]:
    labels = [True] * (count // 2) + [False] * (count - count // 2)
    rng.shuffle(labels)
    return labels


def _parity_examples(task: str, count: int, rng: random.Random) -> list[tuple[str, str]]:
    templates = _INSTRUCTIONS[task]
    answers = ("even", "odd") if task == "en_parity" else ("偶数", "奇数")
    n_even = count // 2
    pairs = _number_prompts(range(0, 1000, 2), len(templates), n_even, rng)
    pairs += _number_prompts(range(1, 1000, 2), len(templates), count - n_even, rng)
    rng.shuffle(pairs)
    return [(templates[t].format(x=n), answers[n % 2]) for n, t in pairs]


def _spelling_examples(task: str, count: int, rng: random.Random) -> list[tuple[str, str]]:
    templates = _INSTRUCTIONS[task]
    spell = number_to_english if task == "en_number_words" else number_to_chinese
    pairs = _number_prompts(range(100), len(templates), count, rng)
    return [(templates[t].format(x=n), spell(n)) for n, t in pairs]


def _sentiment_examples(task: str, count: int, rng: random.Random) -> list[tuple[str, str]]:
    templates = _INSTRUCTIONS[task]
    if task == "en_sentiment":
        review, answers = _en_review, ("positive", "negative")
    else:
        review, answers = _zh_review, ("正面", "负面")
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for positive in _balanced_labels(count, rng):
        for _ in range(50):  # retry to avoid duplicates; the space is large
            instruction = rng.choice(templates).format(x=review(rng, positive))
            if instruction not in seen:
                break
        seen.add(instruction)
        out.append((instruction, answers[0] if positive else answers[1]))
    return out


_TASK_BUILDERS: dict[str, Callable[[str, int, random.Random], list[tuple[str, str]]]] = {
    "en_parity": _parity_examples,
    "en_number_words": _spelling_examples,
    "en_sentiment": _sentiment_examples,
    "zh_numerals": _spelling_examples,
    "zh_sentiment": _sentiment_examples,
    "zh_parity": _parity_examples,
}


def make_tasks(n_per_task: int, seed: int = 0) -> list[dict]:
    """Generate deterministic instruction examples for every task in :data:`TASKS`.

    Binary tasks have exactly balanced labels (within one for odd counts).  Number tasks draw
    numbers without replacement when ``n_per_task`` fits in the number range (0..999 for parity,
    0..99 for spelling), and never repeat an instruction string while unique ones remain.

    Returns:
        A list of ``len(TASKS) * n_per_task`` alpaca-style dicts
        ``{"id": "<task>-00001", "instruction": str, "input": "", "output": str,
        "task": str, "lang": "en" | "zh"}``, shuffled across tasks so that any contiguous
        train/test split is roughly stratified.
    """
    if n_per_task < 0:
        raise ValueError(f"n_per_task must be >= 0, got {n_per_task}")
    rng = random.Random(f"lmforge-tasks-{seed}")
    records: list[dict] = []
    for task in TASKS:
        task_rng = random.Random(f"lmforge-tasks-{seed}-{task}")
        examples = _TASK_BUILDERS[task](task, n_per_task, task_rng)
        for i, (instruction, output) in enumerate(examples, start=1):
            records.append(
                {
                    "id": f"{task}-{i:05d}",
                    "instruction": instruction,
                    "input": "",
                    "output": output,
                    "task": task,
                    "lang": _TASK_LANG[task],
                }
            )
    rng.shuffle(records)
    return records


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def write_demo_data(
    out_dir: str | Path, n_docs: int = 3000, n_per_task: int = 400, seed: int = 0
) -> dict[str, Path]:
    """Write the demo corpus and tasks as UTF-8 JSON Lines (``ensure_ascii=False``).

    Creates ``out_dir`` if needed and (over)writes ``out_dir/corpus.jsonl`` (from
    :func:`make_corpus`) and ``out_dir/tasks.jsonl`` (from :func:`make_tasks`), one JSON object
    per line.

    Returns:
        ``{"corpus": Path to corpus.jsonl, "tasks": Path to tasks.jsonl}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"corpus": out / "corpus.jsonl", "tasks": out / "tasks.jsonl"}
    _write_jsonl(paths["corpus"], make_corpus(n_docs, seed=seed))
    _write_jsonl(paths["tasks"], make_tasks(n_per_task, seed=seed))
    return paths
