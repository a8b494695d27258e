"""The corpus of ``bench.search``: 100,000 phone-store conversations, deterministic (one seeded
``random.Random``), and what each of the benchmark's queries should find in it.

Each conversation is 3-5 turns (6-10 messages), English (70%) or Chinese (30%), each turn a topic (screen size,
colour, storage, camera, battery, trade-in, order, warranty; in ~43% of conversations delivery) whose user and
assistant sentences are picked from a few templates and their slots filled (models, sizes, colours, storage,
prices, cities, order numbers), so terms differ in selectivity: "delivery" is in ~30% of conversations,
"Reykjavik" (an extra turn) in ~0.1%, "英寸" in the Chinese size turns, "4K" in some camera turns.  ~5% carry a
stock check by tool call and its result.  Owners: one big tenant holds the even-numbered half, the odd half is
spread over 1,000 small owners (50 each); an owner is the SHA-256 of the bearer key, as the gateway makes it in
open mode.  Conversation n was last active at T0 + 10 n, so "newest first" is "highest n first".
"""

# The Chinese lines are written with Chinese punctuation, as a customer types them.
# ruff: noqa: RUF001

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

import orjson

CONVERSATIONS = 100_000
SMALL_OWNERS = 1000
BIG_KEY = "bench-search-big"
SMALL_KEY = "bench-search-7"  # one of the 1,000 small owners (bench-search-0 ... bench-search-999)
QUERIES = (
    ("rare word", "Reykjavik"),
    ("common word", "delivery"),
    ("two words", "blue 512gb"),
    ("Chinese, 2 characters", "英寸"),
    ("2 characters", "4K"),
    ("matches nothing", "pterodactyl"),
)
T0 = 1_760_000_000.0

MODELS = ("Aurora X", "Aurora X Pro", "Nova 5", "Nova 5 Ultra", "Pixelle 9", "Pixelle 9 Max", "Orbit S", "Orbit Mini")
SIZES = ("6.1", "6.5", "6.7")
COLOURS = {"black": "黑色", "white": "白色", "blue": "蓝色", "green": "绿色", "purple": "紫色", "gold": "金色"}
STORAGE = ("128GB", "256GB", "512GB", "1TB")
PANELS = ("OLED", "2K OLED", "LCD", "2K AMOLED")
CITIES = {"Leeds": "上海", "Bristol": "杭州", "Glasgow": "成都", "Cardiff": "广州", "York": "深圳", "Bath": "南京"}
OLD = ("Galaxy S9", "iPhone 8", "Pixel 4a", "Moto G7", "Nova 3")

# Each topic: (user sentences, assistant sentences); one of each is picked and its slots filled.
EN_TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "size": (
        (
            "I'd like a phone with a {size} inch screen, something I can use with one hand.",
            "Is the {model} {size} inch or bigger?",
            "Which models have a {size} inch display?",
        ),
        (
            "The {model} has a {size} inch {panel} display at {hz} Hz.",
            "We have the {model} at {size} inch and the {model2} at {size2} inch, both {panel}.",
        ),
    ),
    "colour": (
        ("Does the {model} come in {colour}?", "I really want a {colour} one, is it in stock?"),
        (
            "Yes, the {model} comes in {colour}, {colour2} and {colour3}; {colour} is the most popular this month.",
            "Sorry, {colour} is sold out until next week, but {colour2} is available now.",
        ),
    ),
    "storage": (
        ("How much is the {storage} version?", "Is {storage} enough for photos and a few games?"),
        (
            "The {model} with {storage} is £{price}; the {storage2} one is £{price2}.",
            "{storage} holds roughly {photos} photos; most customers pick {storage2}.",
        ),
    ),
    "camera": (
        (
            "Can it record 4K video?",
            "How good is the camera at night?",
            "Is the front camera any good?",
            "How far can it zoom?",
        ),
        (
            "Yes, the {model} records 4K at up to 60 fps with stabilisation.",
            "The main camera has a {mp} MP sensor; night mode works well under street lighting.",
            "The selfie camera is {mp2} MP and records 1080p.",
            "3x optical zoom, and up to 30x digital, which is fine for signs but soft for faces.",
        ),
    ),
    "battery": (
        ("How long does the battery last?", "Does it support wireless charging?"),
        (
            "About {hours} hours of mixed use; it charges to 50% in {mins} minutes with the {watts} W charger.",
            "Yes, {watts2} W wireless and {watts} W over the cable.",
        ),
    ),
    "tradein": (
        ("Can I trade in my old {old}?", "What would you give me for a {old} with a cracked back?"),
        (
            "We'd give you about £{amount} for a {old} in good condition, taken off the price at checkout.",
            "With a cracked back a {old} is worth about £{amount2}.",
        ),
    ),
    "order": (
        ("Where is my order {order}?", "Can I change the address on order {order}?"),
        (
            "Order {order} left our warehouse on the {day}th and should reach you within {days} days.",
            "I've updated order {order}; the courier has the new address.",
        ),
    ),
    "warranty": (
        ("What does the warranty cover?", "Is screen damage covered?"),
        (
            "Two years against manufacturing faults; accidental damage cover is £{amount2} a year extra.",
            "Screen damage is covered with the care plan, one repair a year.",
        ),
    ),
}
EN_DELIVERY = (
    ("How long does delivery to {city} take?", "Is there free delivery on the {model}?"),
    (
        "Standard delivery to {city} takes {days} working days; express delivery arrives tomorrow if you order by "
        "{hour} pm.",
        "Delivery is free on orders over £{amount}.",
    ),
)
EN_RARE = ("Also, can you send one to my sister in Reykjavik?", "Yes, we ship to Iceland; it takes about a week.")
ZH_TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "size": (
        ("我想要{size}英寸的屏幕，单手好拿一点的。", "{model}是{size}英寸的吗？"),
        ("{model}是{size}英寸的{panel}屏，刷新率{hz}Hz。", "{model}是{size}英寸，{model2}是{size2}英寸。"),
    ),
    "colour": (("{model}有{zcolour}的吗？",), ("有的，{model}有{zcolour}、{zcolour2}和{zcolour3}三种颜色。",)),
    "storage": (("{storage}版本多少钱？",), ("{model} {storage}版本售价{cny}元，{storage2}版本{cny2}元。",)),
    "camera": (
        ("能拍4K视频吗？", "夜景拍照效果怎么样？", "前置摄像头怎么样？"),
        ("可以，{model}支持4K 60帧录制。", "主摄{mp}MP，夜景模式很清楚。", "前置{mp2}MP，自拍够用。"),
    ),
    "battery": (("电池能用多久？",), ("正常使用大约{hours}小时，{watts}W快充{mins}分钟能充到50%。",)),
    "tradein": (("可以以旧换新吗？我的是{old}。",), ("可以，{old}成色好的话大约抵{cny3}元。",)),
    "order": (("我的订单{order}到哪了？",), ("订单{order}已经出库，预计{days}天内送达。",)),
}
ZH_DELIVERY = (("发货到{zcity}要几天？",), ("发到{zcity}一般{days}天，下午{hour}点前下单当天发货。",))
# What a salesperson adds to an answer (0-2 of them), so replies are longer than the questions, as they are.
EN_EXTRA = (
    "Let me know if you'd like me to reserve one for you.",
    "All our phones come unlocked and work on every network.",
    "You can also collect it from any of our shops the same day.",
    "There's a 30-day return policy if it isn't right for you.",
    "Most customers also pick up a case and a screen protector.",
    "Happy to compare it with any other model you're considering.",
)
ZH_EXTRA = (
    "还有什么想了解的可以随时问我。",
    "现在下单送手机壳和钢化膜。",
    "支持七天无理由退货。",
    "全国联保，门店可以自提。",
)


def _slots(rng: random.Random) -> dict[str, Any]:
    colours = rng.sample(list(COLOURS), 3)
    zh = [COLOURS[c] for c in colours]  # the Chinese sentences name the same colours
    models, sizes, storage = rng.sample(MODELS, 2), rng.sample(SIZES, 2), rng.sample(STORAGE, 2)
    return {
        "model": models[0],
        "model2": models[1],
        "size": sizes[0],
        "size2": sizes[1],
        "panel": rng.choice(PANELS),
        "hz": rng.choice((60, 90, 120)),
        "colour": colours[0],
        "colour2": colours[1],
        "colour3": colours[2],
        "storage": storage[0],
        "storage2": storage[1],
        "price": rng.randrange(399, 1299),
        "old": rng.choice(OLD),
        "price2": rng.randrange(399, 1299),
        "photos": rng.randrange(10, 90) * 1000,
        "mp": rng.choice((48, 50, 64)),
        "mp2": rng.choice((12, 16, 32)),
        "hours": rng.randrange(14, 30),
        "mins": rng.randrange(15, 35),
        "watts": rng.choice((25, 45, 67)),
        "watts2": rng.choice((10, 15, 50)),
        "amount": rng.randrange(40, 300),
        "amount2": rng.randrange(10, 90),
        "order": f"A{rng.randrange(10**6, 10**7)}",
        "day": rng.randrange(4, 28),
        "days": rng.randrange(1, 6),
        "hour": rng.randrange(2, 6),
        "city": rng.choice(list(CITIES)),
        "zcity": rng.choice(list(CITIES.values())),
        "cny": rng.randrange(2999, 9999),
        "cny2": rng.randrange(2999, 9999),
        "cny3": rng.randrange(300, 2000),
        "zcolour": zh[0],
        "zcolour2": zh[1],
        "zcolour3": zh[2],
    }


def conversation(rng: random.Random) -> list[dict[str, Any]]:
    """One conversation's messages, as the gateway stores them."""
    chinese = rng.random() < 0.3
    topics, delivery = (ZH_TOPICS, ZH_DELIVERY) if chinese else (EN_TOPICS, EN_DELIVERY)
    extras, space = (ZH_EXTRA, "") if chinese else (EN_EXTRA, " ")
    slots = _slots(rng)
    turns = [topics[name] for name in rng.sample(list(topics), rng.randint(3, 5))]
    if rng.random() < 0.43:  # "delivery" in ~30% of all conversations (English ones only say the word)
        turns[rng.randrange(len(turns))] = delivery
    messages: list[dict[str, Any]] = []
    for asks, answers in turns:
        ask = rng.randrange(len(asks))
        # The answer to the question asked when the templates pair up; any of them otherwise.
        answer = answers[ask] if len(answers) == len(asks) else rng.choice(answers)
        reply = space.join([answer, *rng.sample(extras, rng.randint(0, 2))])
        messages.append({"role": "user", "content": asks[ask].format(**slots)})
        messages.append({"role": "assistant", "content": reply.format(**slots)})
    if rng.random() < 0.05:  # a stock check by tool call, its arguments searchable
        arguments = orjson.dumps({"model": slots["model"], "storage": slots["storage"]}).decode()
        call = {
            "id": f"call_{rng.randrange(10**8)}",
            "type": "function",
            "function": {"name": "check_stock", "arguments": arguments},
        }
        messages[-1:] = [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": '{"in_stock": true, "ships_in_days": 2}'},
            messages[-1],
        ]
    if rng.random() < 0.001:
        messages += [{"role": "user", "content": EN_RARE[0]}, {"role": "assistant", "content": EN_RARE[1]}]
    return messages


def owner_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()  # what the gateway makes of a bearer key in open mode


def _key(n: int) -> str:
    return BIG_KEY if n % 2 == 0 else f"bench-search-{(n // 2) % SMALL_OWNERS}"


def _searchable(message: dict[str, Any]) -> str:
    """The text search looks in (design: content, tool calls' names and arguments), lower-cased."""
    parts = [message["content"]] if isinstance(message.get("content"), str) else []
    for call in message.get("tool_calls") or ():
        parts += [call["function"]["name"], call["function"]["arguments"]]
    return " ".join(parts).lower()


@dataclass
class Corpus:
    """The rows to insert, and what each query should find: per query and key, the matching conversations'
    indexes in order of activity (which is the order of ``n``: conversation n was last active at T0 + 10 n)."""

    conversations: list[tuple[Any, ...]]
    messages: list[tuple[Any, ...]]
    matching: dict[tuple[str, str], list[int]]
    everywhere: dict[str, int]  # query -> conversations matching in the whole database


def build_corpus() -> Corpus:
    rng = random.Random(18)
    corpus = Corpus(
        [],
        [],
        {(q, k): [] for _, q in QUERIES for k in (BIG_KEY, SMALL_KEY)},
        dict.fromkeys((q for _, q in QUERIES), 0),
    )
    queries = [(q, q.lower().split()) for _, q in QUERIES]
    for n in range(CONVERSATIONS):
        key, created = _key(n), T0 + 10 * n
        messages = conversation(rng)
        bodies = [orjson.dumps(m).decode() for m in messages]
        size = sum(len(b.encode()) for b in bodies)
        corpus.conversations.append(
            (n + 1, owner_of(key), f"conv-{n}", created, created + 9, "qwen-plus", len(bodies), size)
        )
        corpus.messages += [
            (n + 1, seq, m["role"], b, created + seq / 2)
            for seq, (m, b) in enumerate(zip(messages, bodies, strict=True))
        ]
        texts = [_searchable(m) for m in messages]
        for q, terms in queries:
            if all(any(t in text for text in texts) for t in terms):
                corpus.everywhere[q] += 1
                if (q, key) in corpus.matching:
                    corpus.matching[q, key].append(n)
    return corpus


def turn_pairs(count: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``count`` (user message, reply) pairs for turns to write, drawn as the corpus's first turns are."""
    rng = random.Random(99)
    return [(m[0], m[1]) for m in (conversation(rng) for _ in range(count))]
