"""Other wire formats (HTTP, XML-RPC, JSON-RPC) over the same dispatch."""
