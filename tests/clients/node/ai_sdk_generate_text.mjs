// The Vercel AI SDK (`ai` + @ai-sdk/openai-compatible) resending its whole history: turn 1 is `generateText` with
// the get_weather tool and `stopWhen: stepCountIs(3)`, so the SDK runs the tool the model asks for and calls again
// with its result; turns 2 and 3 are plain `generateText` calls on the history plus `response.messages` of every
// earlier turn plus a new user message, as the SDK docs build conversation history.
// Prints {"texts": [final text of each turn], "toolCalls": [tool calls the SDK ran], "history": [its ModelMessages],
// "sent": [the messages of each HTTP request, as sent]}.
import { generateText, stepCountIs } from 'ai';

import { run } from './cli.mjs';
import { provider, SYSTEM, sent, toolCalls, tools } from './weather.mjs';

await run(async (target) => {
  const model = provider(target)('qwen-plus');
  const messages = [{ role: 'user', content: 'What is the weather in Hangzhou?' }];
  const texts = [];
  const calls = [];
  for (const next of [null, 'And tomorrow?', 'Thanks!']) {
    if (next) messages.push({ role: 'user', content: next });
    const result = await generateText({
      model,
      system: SYSTEM,
      messages,
      tools,
      stopWhen: stepCountIs(3),
      maxRetries: 0,
    });
    messages.push(...result.response.messages);
    texts.push(result.text);
    calls.push(...toolCalls(result.steps));
  }
  return { texts, toolCalls: calls, history: messages, sent };
});
