// Shared by the scripts of the Vercel AI SDK's default OpenAI provider (`@ai-sdk/openai`): `createOpenAI` pointed
// at the gateway, whose `openai(model)` (AI SDK 5 and later) calls the Responses API, POST /v1/responses.  Its
// documented `fetch` option wraps the global fetch only to note each request as the SDK sent it, with the status
// and the conversation the gateway answered with (the X-Conversation-Id response header); requests and responses
// pass unchanged.

import { createOpenAI } from '@ai-sdk/openai';

// Every HTTP request the provider made, in order: {path, body, status, conversation}.
export const requests = [];

// `headers` as `createOpenAI` takes them (none: the provider as its docs set it up, memory by previousResponseId).
export function openaiProvider({ baseURL }, headers) {
  return createOpenAI({
    baseURL,
    apiKey: 'sk-node-ai-sdk-openai',
    headers,
    fetch: async (input, init) => {
      const request = { path: new URL(String(input)).pathname, body: JSON.parse(init?.body ?? 'null') };
      requests.push(request);
      const response = await fetch(input, init);
      request.status = response.status;
      request.conversation = response.headers.get('x-conversation-id');
      return response;
    },
  });
}

// The provider options continuing the conversation of a turn's result, as the AI SDK docs chain Responses API
// turns: its response id (`providerMetadata.openai.responseId`) as `previousResponseId`.
export function continuing(providerMetadata) {
  return { openai: { previousResponseId: providerMetadata.openai.responseId } };
}
