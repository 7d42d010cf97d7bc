"""A program whose import starts a thread: a parent that imported it must not fork."""

import threading
import time

threading.Thread(target=time.sleep, args=(3600,), daemon=True, name="import-time").start()
