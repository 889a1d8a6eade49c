"""Real local servers that tests start (OpenAI-protocol judge/generator test server)."""
