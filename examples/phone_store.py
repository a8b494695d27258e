"""The phone-store assistant as a stateless client: it sends only the customer's newest message each turn.

    GATEWAY_URL=http://127.0.0.1:8080/v1 DASHSCOPE_API_KEY=sk-... python examples/phone_store.py

The gateway remembers the conversation under the X-Conversation-Id header, so the model still knows which
screen size the customer chose when it asks about the resolution.
"""

import os
import uuid

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080/v1"),
    api_key=os.environ.get("DASHSCOPE_API_KEY", "unused-when-the-gateway-holds-the-key"),
    default_headers={"X-Conversation-Id": f"phone-store-{uuid.uuid4().hex[:8]}"},
)

SYSTEM = (
    "You are a phone-store assistant. Ask the customer, one question at a time, for the screen size "
    "(6.1, 6.5 or 6.7 inch) and then the resolution (2K or 4K). Then recommend a phone."
)

turns = [
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi, I'd like to buy a phone."}],
    [{"role": "user", "content": "6.7 inch, please."}],
    [{"role": "user", "content": "4K."}],
]
for messages in turns:
    reply = client.chat.completions.create(model=os.environ.get("MODEL", "qwen-plus"), messages=messages)
    print(f"customer:  {messages[-1]['content']}")
    print(f"assistant: {reply.choices[0].message.content}\n")
