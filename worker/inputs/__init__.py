"""Input decoding: readings (samples and tags) and the assembler that builds windows of them."""
