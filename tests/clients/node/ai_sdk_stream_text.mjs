// The Vercel AI SDK (`ai` + @ai-sdk/openai-compatible) streaming and resending its whole history: turn 1 is
// `streamText` with the get_weather tool and `stopWhen: stepCountIs(3)`, so the SDK runs the tool the model asks for
// and streams a second call with its result; turns 2 and 3 stream plain answers to the history plus
// `(await result.response).messages` of every earlier turn plus a new user message, as the SDK docs describe.
// Prints {"texts": [final text of each turn], "toolCalls": [tool calls the SDK ran], "history": [its ModelMessages],
// "sent": [the messages of each HTTP request, as sent]}.
import { stepCountIs, streamText } from 'ai';

import { run } from './cli.mjs';
import { provider, SYSTEM, sent, toolCalls, tools } from './weather.mjs';

await run(async (target) => {
  const model = provider(target)('qwen-plus');
  const messages = [{ role: 'user', content: 'What is the weather in Hangzhou?' }];
  const texts = [];
  const calls = [];
  for (const next of [null, 'And tomorrow?', 'Thanks!']) {
    if (next) messages.push({ role: 'user', content: next });
    let failure;
    const result = streamText({
      model,
      system: SYSTEM,
      messages,
      tools,
      stopWhen: stepCountIs(3),
      maxRetries: 0,
      onError: ({ error }) => {
        failure ??= error;
      },
    });
    let text = '';
    for await (const delta of result.textStream) {
      text += delta;
    }
    if (failure) throw failure;
    messages.push(...(await result.response).messages);
    texts.push(text);
    calls.push(...toolCalls(await result.steps));
  }
  return { texts, toolCalls: calls, history: messages, sent };
});
