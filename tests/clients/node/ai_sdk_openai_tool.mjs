// The Vercel AI SDK's default OpenAI provider running a function tool through the Responses API: `generateText` of
// `openai('qwen-plus')` (or, given a third argument `stream`, `streamText`) with the get_weather tool
// (`tool({ inputSchema: z.object(...), execute })`) and `stopWhen: stepCountIs(2)`, so the SDK runs the tool the
// model calls and sends its result back in a second step; then a follow-up turn of only its new user message,
// chained by `previousResponseId` to the first turn's `providerMetadata.openai.responseId` (its last step's).
// Given a fourth argument `header`, the provider also sends X-Conversation-Id (`createOpenAI`'s `headers`); given
// `conversation`, every turn names the conversation instead (`providerOptions.openai.conversation`), no response ids.
// Usage: node ai_sdk_openai_tool.mjs GATEWAY_URL CONVERSATION_ID [generate|stream] [ids|header|conversation].
// Prints {"texts": [text of each turn], "toolCalls": [tool calls the SDK ran], "toolResults": [their outputs],
// "finishReasons": [finish reason of each step of each turn], "responseIds": [...], "warnings": [the SDK's call
// warnings of every step], "requests": [each HTTP request with its status and the conversation the gateway named]}.

import { generateText, stepCountIs, streamText } from 'ai';

import { continuing, openaiProvider, requests } from './ai_sdk_openai.mjs';
import { run } from './cli.mjs';
import { SYSTEM, toolCalls, tools } from './weather.mjs';

const streaming = process.argv[4] === 'stream';
const memory = process.argv[5] ?? 'ids';

// One turn's result as generateText gives it; streamed, once its full stream has been read to the end.
async function turn(options) {
  if (!streaming) return generateText(options);
  const result = streamText(options);
  for await (const part of result.fullStream) {
    if (part.type === 'error') throw part.error;
  }
  return { text: await result.text, steps: await result.steps, providerMetadata: await result.providerMetadata };
}

await run(async (target) => {
  const headers = memory === 'header' ? { 'X-Conversation-Id': target.conversation } : undefined;
  const openai = openaiProvider(target, headers);
  const texts = [];
  const calls = [];
  const toolResults = [];
  const finishReasons = [];
  const responseIds = [];
  const warnings = [];
  let providerOptions = memory === 'conversation' ? { openai: { conversation: target.conversation } } : undefined;
  for (const [n, prompt] of ['What is the weather in Hangzhou?', 'Thanks! And tomorrow?'].entries()) {
    const result = await turn({
      model: openai('qwen-plus'),
      ...(n === 0 && { system: SYSTEM }),
      prompt,
      tools,
      stopWhen: stepCountIs(2),
      providerOptions,
      maxRetries: 0,
    });
    texts.push(result.text);
    calls.push(...toolCalls(result.steps));
    toolResults.push(...result.steps.flatMap((step) => step.toolResults.map((r) => r.output)));
    finishReasons.push(result.steps.map((step) => step.finishReason));
    responseIds.push(result.providerMetadata.openai.responseId);
    warnings.push(...result.steps.flatMap((step) => step.warnings ?? []));
    if (memory !== 'conversation') providerOptions = continuing(result.providerMetadata);
  }
  return { texts, toolCalls: calls, toolResults, finishReasons, responseIds, warnings, requests };
});
