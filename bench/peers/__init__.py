"""The servers eeserve is compared against: the full-depth peers and third-party recipes."""
