"""``lmforge chat CONFIG``: talk to a model in the terminal (no run directory is written).

    lmforge chat model.path=runs/sft generation.temperature=0.7
    printf 'hello\\n/exit\\n' | lmforge chat model.path=runs/sft     # works from a pipe too

Each line you type is a user turn; the model answers with the whole conversation so far as
context. ``/reset`` forgets the conversation, ``/exit`` (or end of input, Ctrl-D) quits.
"""

from __future__ import annotations

from lmforge.config.recipes import ChatRecipe
from lmforge.errors import ConfigError
from lmforge.models.load import load_for_inference, resolve_device
from lmforge.serve.generate import generate

HELP = "type a message; /reset forgets the conversation, /exit quits"


def run(cfg: ChatRecipe) -> int:
    if not cfg.generation.chat:
        raise ConfigError("lmforge chat needs generation.chat=true (it uses the chat template)")
    model, tokenizer = load_for_inference(cfg.model, resolve_device(cfg.device))
    print(HELP, flush=True)
    history: list[dict] = []
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if line == "/exit":
            return 0
        if line == "/reset":
            history = []
            print("(conversation cleared)", flush=True)
            continue
        if not line:
            continue
        if line.startswith("/"):
            print(f"unknown command {line.split()[0]}; {HELP}", flush=True)
            continue
        history.append({"role": "user", "content": line})
        reply = generate(model, tokenizer, [history], cfg.generation)[0]["text"].strip()
        history.append({"role": "assistant", "content": reply})
        print(f"model> {reply}", flush=True)
