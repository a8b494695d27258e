// The official `openai` package listing models through the gateway: `client.models.list()` is GET /v1/models,
// which the gateway passes through to the upstream.  Prints {"models": [every model id, in order]}.
import { run } from './cli.mjs';
import { openaiClient } from './openai_client.mjs';

await run(async ({ baseURL, conversation }) => {
  const client = openaiClient({ baseURL, conversation });
  const models = [];
  for await (const model of client.models.list()) {
    models.push(model.id);
  }
  return { models };
});
