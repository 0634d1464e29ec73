"""Never finishes: the runner must stop it at the time limit, children included."""

import subprocess
import sys
import time

# A child in the same group: the runner must kill it too. Arguments pass on to it, so a
# test can tell its own child from another run's.
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", *sys.argv[1:]])
print("sleeping forever", flush=True)
while True:
    time.sleep(60)
