# One driver for the Python Redis lock tools that interop_redis.rs and interop_redlock.rs meet
# interlock with: `peer.py TOOL URL[,URL...] NAME MODE`. Single-server tools use the first URL;
# the Redlock tools use every URL as a master.
#
# - `hold`: takes the lock at once (exit 4 if busy), prints `locked TOKEN` (the value it set);
#   a stdin line `release` releases it (`released`); end of stdin ends the program.
# - `try`: one non-blocking attempt: exit 0 after taking and releasing the lock, 3 if busy.
# - `wait=SECONDS`: one non-blocking attempt that must fail (exit 5 if it got the lock), then
#   `busy` on stdout, then the tool's own blocking acquire bounded by SECONDS: exit 0 after
#   taking and releasing the lock, 3 if it gave up.
import sys

import redis

tool, urls, name, mode = sys.argv[1:5]
urls = urls.split(",")
r = redis.Redis.from_url(urls[0])


class ToolLock:
    # A tool whose lock object has acquire(blocking=..., <its timeout keyword>=...) and release().
    timeout_keyword = "timeout"

    def acquire(self, wait):
        if wait is None:
            return self.lock.acquire(blocking=False)
        return self.lock.acquire(blocking=True, **{self.timeout_keyword: wait})

    def release(self):
        self.lock.release()


class RedisPy(ToolLock):
    # redis-py's Lock with its defaults: no timeout, so `SET name token NX` with no PX.
    timeout_keyword = "blocking_timeout"

    def __init__(self):
        self.lock = r.lock(name)

    def token(self):
        return self.lock.local.token.decode()


class PythonRedisLock(ToolLock):
    # python-redis-lock with its defaults: key `lock:NAME`, no expire.
    def __init__(self):
        import redis_lock

        self.lock = redis_lock.Lock(r, name)

    def token(self):
        return self.lock.id


class Pottery(ToolLock):
    # pottery's Redlock on every URL as a master: key `redlock:NAME`, auto-release after 60 s.
    def __init__(self):
        import pottery

        masters = {redis.Redis.from_url(u) for u in urls}
        self.lock = pottery.Redlock(key=name, masters=masters, auto_release_time=60)

    def token(self):
        return self.lock._uuid  # private: the value it set, to compare with the keys


class RedlockPy:
    # redlock-py on every URL as a master: key NAME, a 60 s TTL.
    def __init__(self):
        import redlock

        self.redlock = redlock
        self.held = None

    def acquire(self, wait):
        if wait is None:
            self.dlm = self.redlock.Redlock(urls, retry_count=1, retry_delay=0.01)
        else:
            self.dlm = self.redlock.Redlock(urls, retry_count=int(wait / 0.1) + 1, retry_delay=0.1)
        self.held = self.dlm.lock(name, 60000)
        return bool(self.held)

    def release(self):
        self.dlm.unlock(self.held)

    def token(self):
        return self.held.key.decode()


TOOLS = {"redis-py": RedisPy, "python-redis-lock": PythonRedisLock, "pottery": Pottery, "redlock-py": RedlockPy}
peer = TOOLS[tool]()

if mode == "hold":
    if not peer.acquire(None):
        sys.exit(4)
    print("locked", peer.token(), flush=True)
    for line in sys.stdin:
        if line.strip() == "release":
            peer.release()
            print("released", flush=True)
elif mode == "try":
    if not peer.acquire(None):
        sys.exit(3)
    peer.release()
elif mode.startswith("wait="):
    if peer.acquire(None):
        peer.release()
        sys.exit(5)
    print("busy", flush=True)
    if not peer.acquire(float(mode[len("wait="):])):
        sys.exit(3)
    peer.release()
else:
    sys.exit("unknown mode " + mode)
