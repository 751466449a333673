"""The command-line front-ends: each parses its arguments, calls the layers below and prints; nothing imports them."""
