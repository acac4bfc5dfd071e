"""IO drivers: event loops, the blocking client socket, asyncio protocols."""
