// Shared by the client scripts: the gateway URL and conversation id from argv (`node SCRIPT URL ID`) or from
// GATEWAY_URL / CONVERSATION_ID, and a runner that prints the script's JSON summary on stdout and exits non-zero
// on any error.

export function target() {
  const url = process.argv[2] ?? process.env.GATEWAY_URL;
  const conversation = process.argv[3] ?? process.env.CONVERSATION_ID;
  if (!url || !conversation) {
    throw new Error('usage: node SCRIPT GATEWAY_URL CONVERSATION_ID (or set GATEWAY_URL and CONVERSATION_ID)');
  }
  return { baseURL: `${url.replace(/\/+$/, '')}/v1`, conversation };
}

export async function run(main) {
  try {
    const summary = await main(target());
    process.stdout.write(`${JSON.stringify(summary)}\n`);
  } catch (error) {
    console.error(error?.stack ?? error);
    if (error?.responseBody) console.error(`response body: ${error.responseBody}`);
    process.exit(1);
  }
}
