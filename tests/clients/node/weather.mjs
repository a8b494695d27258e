// The get_weather tool and the provider shared by the Vercel AI SDK scripts: `createOpenAICompatible` pointed at
// the gateway with the X-Conversation-Id header, as the @ai-sdk/openai-compatible docs set custom headers.  Its
// documented `fetch` option wraps the global fetch only to note the messages of each request as the SDK sent them
// (the tests check that the SDK re-serialized what it resends); requests and responses pass unchanged.
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { tool } from 'ai';
import { z } from 'zod';

export const SYSTEM = 'You are a weather assistant. Use get_weather for current conditions.';

// The `messages` of every chat request the provider made, in order.
export const sent = [];

export function provider({ baseURL, conversation }) {
  return createOpenAICompatible({
    name: 'gateway',
    baseURL,
    apiKey: 'sk-node-ai-sdk',
    headers: { 'X-Conversation-Id': conversation },
    fetch: async (input, init) => {
      if (typeof init?.body === 'string') sent.push(JSON.parse(init.body).messages);
      return fetch(input, init);
    },
  });
}

export const tools = {
  get_weather: tool({
    description: 'Get the current weather in a city',
    inputSchema: z.object({ city: z.string(), unit: z.enum(['celsius', 'fahrenheit']) }),
    execute: async ({ city, unit }) => ({ city, unit, temperature: 21, condition: 'sunny' }),
  }),
};

// A turn's tool calls as the SDK parsed them (what the tool ran with), for the summary.
export function toolCalls(steps) {
  return steps.flatMap((step) => step.toolCalls.map((call) => ({ name: call.toolName, input: call.input })));
}
