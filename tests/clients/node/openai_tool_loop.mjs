// The official `openai` package running the function-calling loop of its docs with the whole history resent every
// request: the assistant message asking for get_weather is pushed back as received, the tool result is appended as
// a `tool` message, and after the answer one more user turn follows.  Prints {"texts": [final text of each turn]}.

import { run } from './cli.mjs';
import { openaiClient } from './openai_client.mjs';

const tools = [
  {
    type: 'function',
    function: {
      name: 'get_weather',
      description: 'Get the current weather in a city',
      parameters: {
        type: 'object',
        properties: { city: { type: 'string' }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } },
        required: ['city', 'unit'],
      },
    },
  },
];

function getWeather({ city, unit }) {
  return { city, unit, temperature: 21, condition: 'sunny' };
}

await run(async ({ baseURL, conversation }) => {
  const client = openaiClient({ baseURL, conversation });
  const messages = [{ role: 'user', content: 'What is the weather in Hangzhou?' }];
  const texts = [];

  let completion = await client.chat.completions.create({ model: 'qwen-plus', messages, tools });
  let message = completion.choices[0].message;
  messages.push(message);
  for (const toolCall of message.tool_calls ?? []) {
    const result = getWeather(JSON.parse(toolCall.function.arguments));
    messages.push({ role: 'tool', tool_call_id: toolCall.id, content: JSON.stringify(result) });
  }
  completion = await client.chat.completions.create({ model: 'qwen-plus', messages, tools });
  message = completion.choices[0].message;
  messages.push(message);
  texts.push(message.content);

  messages.push({ role: 'user', content: 'And tomorrow?' });
  completion = await client.chat.completions.create({ model: 'qwen-plus', messages, tools });
  texts.push(completion.choices[0].message.content);
  return { texts };
});
