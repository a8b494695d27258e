"""The client matrix: real client libraries that users point at the gateway, each used as its own docs say."""
