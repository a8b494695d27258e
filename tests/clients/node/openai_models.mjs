// The official `openai` package listing models through the gateway: `client.models.list()` is GET /v1/models,
// which the gateway passes through to the upstream.  Prints {"models": [every model id, in order]}.
import OpenAI from 'openai';

import { run } from './cli.mjs';

await run(async ({ baseURL, conversation }) => {
  const client = new OpenAI({
    baseURL,
    apiKey: 'sk-node-openai',
    defaultHeaders: { 'X-Conversation-Id': conversation },
    maxRetries: 0,
    timeout: 10_000,
  });
  const models = [];
  for await (const model of client.models.list()) {
    models.push(model.id);
  }
  return { models };
});
