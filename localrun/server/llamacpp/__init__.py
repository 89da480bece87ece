"""llama-server's small routes and rerank, for the editor plugins and scripts that call them."""
