// The Vercel AI SDK's default OpenAI provider, `openai('qwen-plus')` from `createOpenAI({ baseURL, apiKey })`, on the
// Responses API with server-side memory: three `generateText` turns, the first with a system prompt, each later one
// only its new user message, chained with `providerOptions.openai.previousResponseId` set to the previous result's
// `providerMetadata.openai.responseId`.  No X-Conversation-Id header: the response ids carry the memory.
// Prints {"texts": [text of each turn], "finishReasons": [...], "responseIds": [...], "warnings": [the SDK's call
// warnings], "requests": [each HTTP request with its status and the conversation the gateway named]}.

import { generateText } from 'ai';

import { continuing, openaiProvider, requests } from './ai_sdk_openai.mjs';
import { run } from './cli.mjs';

await run(async (target) => {
  const openai = openaiProvider(target);
  const texts = [];
  const finishReasons = [];
  const responseIds = [];
  const warnings = [];
  let providerOptions;
  for (const [n, prompt] of ['My name is Ada.', 'What is my name?', 'Thanks, bye.'].entries()) {
    const result = await generateText({
      model: openai('qwen-plus'),
      ...(n === 0 && { system: 'You are a concise assistant.' }),
      prompt,
      providerOptions,
      maxRetries: 0,
    });
    texts.push(result.text);
    finishReasons.push(result.finishReason);
    responseIds.push(result.providerMetadata.openai.responseId);
    warnings.push(...(result.warnings ?? []));
    providerOptions = continuing(result.providerMetadata);
  }
  return { texts, finishReasons, responseIds, warnings, requests };
});
