"""incognito-onion: an end-to-end encrypted video conference published as a Tor onion service."""

__version__ = "0.1.0"
