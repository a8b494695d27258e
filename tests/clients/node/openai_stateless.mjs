// The official `openai` package as a stateless client: every turn sends only its newest user message, and the
// X-Conversation-Id header (set once through `defaultHeaders`) lets the gateway supply the history.  Turns 1 and 3
// are plain requests, turn 2 streams.  Prints {"texts": [reply of each turn]}.

import { run } from './cli.mjs';
import { openaiClient } from './openai_client.mjs';

await run(async ({ baseURL, conversation }) => {
  const client = openaiClient({ baseURL, conversation });
  const texts = [];

  const first = await client.chat.completions.create({
    model: 'qwen-plus',
    messages: [{ role: 'user', content: 'My name is Ada.' }],
  });
  texts.push(first.choices[0].message.content);

  const stream = await client.chat.completions.create({
    model: 'qwen-plus',
    messages: [{ role: 'user', content: 'What is my name?' }],
    stream: true,
  });
  let streamed = '';
  for await (const chunk of stream) {
    streamed += chunk.choices[0]?.delta?.content || '';
  }
  texts.push(streamed);

  const third = await client.chat.completions.create({
    model: 'qwen-plus',
    messages: [{ role: 'user', content: 'Thanks, bye.' }],
  });
  texts.push(third.choices[0].message.content);
  return { texts };
});
