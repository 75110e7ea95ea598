"""The demos behind `make demo` (digits, digits-long, photos) and the digit scorer that reads
their samples; nothing in the library imports them."""
