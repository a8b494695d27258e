// The official `openai` package's client as every Node script here makes it: pointed at the gateway, one
// conversation through `defaultHeaders`, no retries of its own (a test must see the first answer).
import OpenAI from 'openai';

export function openaiClient({ baseURL, conversation }) {
  return new OpenAI({
    baseURL,
    apiKey: 'sk-node-openai',
    defaultHeaders: { 'X-Conversation-Id': conversation },
    maxRetries: 0,
    timeout: 10_000,
  });
}
