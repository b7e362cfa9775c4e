"""Generate assets/tulu_sample.jsonl: a synthetic, Tulu-v2-shaped sample for offline runs.

The real allenai/tulu-v2-sft-mixture needs the Hugging Face hub. This file stands in for it when
run with --offline: the same record shape ({"dataset", "id", "messages": [{"role", "content"}]}),
the same subset names, and a similar mix of lengths (mostly short single-turn, some long
multi-turn, some with a system message). The text is generated from templates and word lists:
it is varied English prose, code and arithmetic, not meaningful, and carries no third-party text.
It measures attention cost, which depends on token counts, not on what the tokens say.

Deterministic: `python assets/make_sample.py` rewrites the file byte for byte from SEED.
"""
import json
import os
import random

SEED = 20240601
N_RECORDS = 400
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tulu_sample.jsonl")

NOUNS = """system river model garden engine theory market signal library protocol harvest bridge
forest network budget canvas lesson planet recipe circuit village method sensor archive debate
journey factory crystal melody orbit pattern window harbor storm ladder compass ocean desert
museum vaccine battery algorithm tensor cache kernel compiler database server cluster gradient
dataset teacher student farmer pilot doctor engineer artist council committee startup
volcano glacier molecule protein enzyme galaxy telescope satellite poem novel chapter
contract invoice schedule warehouse pipeline transformer attention memory thread lock""".split()
ADJS = """quick careful bright ancient modern fragile robust silent noisy efficient elegant
complex simple hidden visible rural urban gentle fierce shallow deep narrow broad rapid steady
curious sparse dense linear random stable volatile formal casual crucial minor vivid subtle
hollow golden digital analog remote local shared private open closed early late""".split()
VERBS = """builds measures explains improves reduces supports connects protects describes
predicts transforms collects balances compares shapes follows reveals tests optimizes stores
filters encodes decodes ranks schedules renders computes models tracks limits extends""".split()
ADVS = """quietly rapidly carefully rarely often gradually suddenly clearly roughly
precisely slowly mostly barely steadily""".split()
NAMES = """Alice Bob Carmen Dmitri Elena Farid Grace Hiro Ines Jamal Kofi Lena Mateo Nadia
Omar Priya Quinn Rosa Sven Tariq Uma Victor Wen Ximena Yusuf Zoe""".split()
PLACES = """Lisbon Nairobi Osaka Quito Tallinn Hanoi Toronto Zurich Lagos Perth Oslo
Cusco Dakar Kyoto Tbilisi Bergen""".split()
ACCENTED = "café naïve résumé jalapeño façade Zürich São Paulo Ångström coöperate déjà vu".split()
SYMBOLS = ["—", "…", "→", "≈", "°C", "±", "µs", "€", "✓", "“quoted”"]
SYSTEMS = [
    "You are a helpful assistant.",
    "You are an AI assistant. You will be given a task. You must generate a detailed and long answer.",
    "You are an AI assistant that helps people find information. Provide a detailed answer so the "
    "user does not need to search outside to understand the answer.",
    "You are a teacher. Given a task, you explain in simple steps what the task is asking, any "
    "guidelines it provides and how to use those guidelines to find the answer.",
    "User will give you a task with some instruction. Your job is to follow the instructions as "
    "faithfully as you can. While answering think step by step and justify your answer.",
]


def base(verb):
    return verb[:-2] if verb.endswith("es") and verb[-3] in "sxh" else verb[:-1]  # "builds" -> "build"


def plural(noun):
    return noun[:-1] + "ies" if noun.endswith("y") and noun[-2] not in "aeiou" else noun + "s"


def past(verb):
    b = base(verb)
    return b + ("d" if b.endswith("e") else "ed")


def sentence(r):
    """One sentence from a handful of shapes, with an occasional accented word or symbol."""
    n1, n2, a1, a2 = r.choice(NOUNS), r.choice(NOUNS), r.choice(ADJS), r.choice(ADJS)
    v, adv = r.choice(VERBS), r.choice(ADVS)
    shapes = [
        f"The {a1} {n1} {v} the {a2} {n2}.",
        f"In {r.choice(PLACES)}, {r.choice(NAMES)} noticed that every {n1} {adv} {v} a {n2}.",
        f"A {a1} {n1} is not always {a2}; it {v} whatever {n2} it meets.",
        f"Why does the {n1} {base(v)} the {n2} so {adv}?",
        f"Most {plural(n1)} are {a1}, but a {a2} one {v} the {n2} {adv}.",
        f"According to {r.choice(NAMES)}, the {n1} {v} about {r.randint(2, 97)} percent of the {n2}.",
        f"If the {n2} is {a1}, then the {n1} {adv} {v} it.",
        f"Between {r.randint(1900, 2023)} and now, the {a1} {n1} has {past(v)} many a {n2}.",
    ]
    s = r.choice(shapes)
    if r.random() < 0.08:
        s = s[:-1] + f" ({r.choice(ACCENTED)} {r.choice(SYMBOLS)} {r.randint(1, 999)})" + s[-1]
    return s


def paragraph(r, lo=3, hi=8):
    return " ".join(sentence(r) for _ in range(r.randint(lo, hi)))


def prose(r, n_par):
    return "\n\n".join(paragraph(r) for _ in range(n_par))


def bullet_list(r, numbered=False):
    items = [sentence(r) for _ in range(r.randint(3, 8))]
    return "\n".join((f"{i + 1}. " if numbered else "- ") + s for i, s in enumerate(items))


def code_block(r):
    """A small, syntactically plausible Python function with random names and constants."""
    fn, arg, acc = r.choice(NOUNS), plural(r.choice(NOUNS)), r.choice(ADJS) + "_total"
    name = f"{base(r.choice(VERBS))}_{fn}"
    k, op = r.randint(2, 9), r.choice(["+", "*", "-"])
    cond = r.choice(["> 0", "% 2 == 0", f"< {k * 10}", "is not None"])
    body = [f"def {name}({arg}, scale={k}):",
            f'    """Return the {r.choice(ADJS)} {fn} score of {arg}."""',
            f"    {acc} = 0", f"    for item in {arg}:", f"        if item {cond}:",
            f"            {acc} = {acc} {op} item * scale", f"    return {acc}", "",
            f"print({name}([{', '.join(str(r.randint(0, 99)) for _ in range(5))}]))"]
    if r.random() < 0.4:
        body += ["", f"class {fn.title()}{r.choice(NOUNS).title()}:",
                 "    def __init__(self, size):", "        self.size = size",
                 "        self.items = [0] * size", "",
                 "    def add(self, index, value):",
                 "        self.items[index % self.size] += value", "        return self.items"]
    return "```python\n" + "\n".join(body) + "\n```"


def math_problem(r):
    """A word problem and a step-by-step answer whose arithmetic is actually right."""
    who, n = r.choice(NAMES), r.choice(NOUNS)
    a, b, c = r.randint(3, 60), r.randint(2, 12), r.randint(1, 40)
    q = (f"{who} has {a} boxes with {b} {plural(n)} in each box and gives away {c} {plural(n)}. "
         f"How many {plural(n)} are left?")
    steps = (f"First, {a} boxes x {b} {plural(n)} = {a * b} {plural(n)}.\n"
             f"Then {a * b} - {c} = {a * b - c}.\nSo the answer is {a * b - c}.")
    return q, steps


def flan(r):
    task = r.choice(["Summarize the following text in one sentence.", "What is the sentiment of this review?",
                     "Answer the question based on the passage.", "Translate the sentence into plain English.",
                     "Is the following statement true or false?"])
    return [("user", f"{task}\n\n{paragraph(r, 2, 5)}"), ("assistant", sentence(r))]


def cot(r):
    q, steps = math_problem(r)
    return [("user", q + " Let's think step by step."), ("assistant", steps)]


def code_alpaca(r):
    return [("user", f"Write a Python function that {r.choice(VERBS)} a list of {plural(r.choice(NOUNS))}."),
            ("assistant", code_block(r))]


def gpt4_alpaca(r):
    return [("user", f"Give me some tips about the {r.choice(ADJS)} {r.choice(NOUNS)}."),
            ("assistant", paragraph(r, 1, 3) + "\n\n" + bullet_list(r, numbered=r.random() < 0.5))]


def open_orca(r):
    msgs = [("system", r.choice(SYSTEMS))] + flan(r)
    msgs[-1] = ("assistant", prose(r, r.randint(1, 3)))
    return msgs


def science(r):
    claim = sentence(r)
    return [("user", f"Abstract: {prose(r, 2)}\n\nClaim: {claim}\n\nDoes the abstract support the claim? "
                     "Answer with a JSON object with keys \"verdict\" and \"evidence\"."),
            ("assistant", json.dumps({"verdict": r.choice(["SUPPORT", "CONTRADICT", "NEI"]),
                                      "evidence": [sentence(r)]}))]


def hard_coded(r):
    return [("user", r.choice(["Who are you?", "What is your name?", "Who built you?"])),
            ("assistant", "I am Tulu, a helpful assistant trained on a mixture of instruction data. " + sentence(r))]


def long_answer(r):
    """One assistant turn of a long chat: prose, sometimes a list, code or worked arithmetic."""
    parts = [prose(r, r.randint(2, 6))]
    extra = r.random()
    if extra < 0.3:
        parts.append(bullet_list(r, numbered=True))
    elif extra < 0.55:
        parts.append("Here is an example:\n\n" + code_block(r))
    elif extra < 0.7:
        parts.append(math_problem(r)[1])
    return "\n\n".join(parts)


def multi_turn(r, lo, hi):
    msgs = [("system", r.choice(SYSTEMS))] if r.random() < 0.15 else []
    for turn in range(r.randint(lo, hi)):
        opener = f"Can you explain how the {r.choice(ADJS)} {r.choice(NOUNS)} works? {paragraph(r, 1, 3)}"
        ask = sentence(r) if turn else opener
        msgs += [("user", ask), ("assistant", long_answer(r))]
    return msgs


def sharegpt(r):
    return multi_turn(r, 2, 10)


def lima(r):
    return [("user", f"{sentence(r)} {sentence(r)}"), ("assistant", prose(r, r.randint(4, 12)))]


def wizardlm(r):
    return multi_turn(r, 1, 2)


# Subset name, generator, weight (percent): roughly Tulu v2's own proportions of 326k records
# (FLAN and CoT 50k each, ShareGPT 114k, WizardLM and Open-Orca 30k, ...); tiny subsets get >= 1.
SUBSETS = [("flan_v2", flan, 15), ("cot", cot, 15), ("oasst1", wizardlm, 3), ("sharegpt", sharegpt, 33),
           ("gpt4_alpaca", gpt4_alpaca, 6), ("code_alpaca", code_alpaca, 6), ("lima", lima, 1),
           ("wizardlm", wizardlm, 9), ("open_orca", open_orca, 9), ("hard_coded", hard_coded, 1),
           ("science", science, 2)]


def main():
    r = random.Random(SEED)
    names, gens, weights = zip(*[(n, g, w) for n, g, w in SUBSETS])
    counts = {n: 0 for n in names}
    with open(OUT, "w", encoding="utf-8", newline="\n") as f:
        for i in range(N_RECORDS):
            k = r.choices(range(len(names)), weights=weights)[0]
            msgs = gens[k](r)
            counts[names[k]] += 1
            rec = {"dataset": names[k], "id": f"{names[k]}_{i}",
                   "messages": [{"role": role, "content": text} for role, text in msgs]}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(f"wrote {N_RECORDS} records to {OUT} ({os.path.getsize(OUT) / 1e6:.2f} MB): {counts}")


if __name__ == "__main__":
    main()
