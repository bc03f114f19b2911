"""The file backend under a low descriptor limit (`ulimit -n`): the descriptors it keeps open
between acquisitions are a small share of the limit, shared by every `connect()` of the process,
and given back when the process runs out, so the application's own `open()` and `socket()` keep
working.

Each case runs in a child process that lowers its own limit (`resource.setrlimit`) before its
first acquisition.
"""

from __future__ import annotations

from conftest import python_child

PRELUDE = """
import errno, os, resource, socket, sys, interlock
url = sys.argv[1]
lock_dir = url[len("file://"):]
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
def kept():
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(lock_dir + "/"):
                n += 1
        except OSError:
            pass
    return n
"""


def run(code: str, url: str) -> list:
    p = python_child(PRELUDE + code, url)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    return out.split()


def test_5000_names_under_a_limit_of_256_on_two_providers(url):
    out = run(
        """
most = 0
a, b = interlock.connect(url), interlock.connect(url)
for i in range(5000):
    for locks in (a, b):
        with locks.mutex(f"user-{i}"):
            pass
    most = max(most, kept())
# The application's own files and sockets still open.
files = [open("/dev/null") for _ in range(150)]
socks = [socket.socket() for _ in range(10)]
for f in files + socks:
    f.close()
print("most", most)
""",
        url,
    )
    assert out[0] == "most"
    # An eighth of the limit, for both providers together.
    assert int(out[1]) <= 32, out


def test_out_of_descriptors_the_cache_gives_its_own_back(url):
    out = run(
        """
locks = interlock.connect(url)
for i in range(100):
    with locks.mutex(f"user-{i}"):
        pass
before = kept()
filler = []
while True:
    try:
        filler.append(open("/dev/null"))
    except OSError as e:
        assert e.errno == errno.EMFILE, e
        break
# The process is out of descriptors, the cache still holds some: an acquisition works.
with locks.mutex("one-more") as g:
    token = g.fencing_token
for f in filler:
    f.close()
print("before", before, "token", token)
""",
        url,
    )
    assert out[0] == "before" and int(out[1]) > 0, out
    assert out[2:] == ["token", "1"], out
