"""Sans-IO core: the connection state machine and method dispatch."""
