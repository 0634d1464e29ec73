"""How long a test waits for what is bound to happen: a job to end, a server to answer, a
client's request to come back. Generous, because the suite must pass beside other work on a
2-core machine; a passing test never waits this long, only one that fails anyway does."""

WAIT_SECONDS = 600.0
