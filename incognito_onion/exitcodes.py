"""Exit codes of the ``incognito-onion`` command, one per kind of failure, so scripts and
service managers can tell them apart."""

OK = 0
ERROR = 1  # an unexpected failure (a bug); the message says so
CONFIG = 2  # bad config file, environment value or flag
STATE = 3  # the state directory cannot be used
BIND = 4  # the web server cannot listen (port in use, address not here)
TURN = 5  # coturn missing or failing
TOR = 6  # tor missing or failing (tor.errors gives finer codes where it can)
REDIS = 7  # redis-server missing or failing (only with server.workers above 1)
INTERRUPTED = 130
