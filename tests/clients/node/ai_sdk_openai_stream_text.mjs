// The Vercel AI SDK's default OpenAI provider streaming from the Responses API: two `streamText` turns of
// `openai('qwen-plus')`, the second only its new user message chained by `previousResponseId` to the first's
// `providerMetadata.openai.responseId` (a promise on a stream result).  Each turn reads `fullStream` to its end.
// Prints {"turns": [{"deltas": [each text-delta], "text": await result.text, "finishReason": the finish part's,
// "resultFinishReason": await result.finishReason, "parts": [the part types in order, repeats once],
// "responseId", "warnings": await result.warnings}],
// "requests": [each HTTP request with its status and the conversation the gateway named]}.

import { streamText } from 'ai';

import { continuing, openaiProvider, requests } from './ai_sdk_openai.mjs';
import { run } from './cli.mjs';

await run(async (target) => {
  const openai = openaiProvider(target);
  const turns = [];
  let providerOptions;
  for (const [n, prompt] of ['Tell me about the 6.7 inch phones.', 'And in 4K?'].entries()) {
    const result = streamText({
      model: openai('qwen-plus'),
      ...(n === 0 && { system: 'You are a phone-store assistant.' }),
      prompt,
      providerOptions,
      maxRetries: 0,
    });
    const deltas = [];
    const parts = [];
    let finishReason;
    for await (const part of result.fullStream) {
      parts.push(part.type);
      if (part.type === 'text-delta') deltas.push(part.text);
      if (part.type === 'finish') finishReason = part.finishReason;
      if (part.type === 'error') throw part.error;
    }
    const providerMetadata = await result.providerMetadata;
    turns.push({
      deltas,
      text: await result.text,
      finishReason,
      resultFinishReason: await result.finishReason,
      parts: parts.filter((type, i) => type !== parts[i - 1]),
      responseId: providerMetadata.openai.responseId,
      warnings: (await result.warnings) ?? [],
    });
    providerOptions = continuing(providerMetadata);
  }
  return { turns, requests };
});
