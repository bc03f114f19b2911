"""The flash sale: multiprocessing.Pool(16) buyers race for the last items in stock, kept in a
plain file. With the lock exactly the stock is sold; without it, they oversell."""

from __future__ import annotations

import pytest

from conftest import python_child

SALE = """
import multiprocessing, os, sys, time, interlock
url, dir_, stock, use_lock = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "lock"
STOCK, SALES = os.path.join(dir_, "stock"), os.path.join(dir_, "sales")
locks = interlock.connect(url)          # before the pool forks

def buy(buyer):
    def attempt():
        with open(STOCK) as f:
            left = int(f.read())
        time.sleep(0.05)                # the payment: a window for the others
        if left <= 0:
            return False
        tmp = f"{STOCK}.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(str(left - 1))
        os.replace(tmp, STOCK)
        with open(SALES, "a") as f:
            f.write(f"{buyer}\\n")
        return True
    if use_lock:
        with locks.mutex("flash-sale"):
            return attempt()
    return attempt()

if __name__ == "__main__":
    with open(STOCK, "w") as f:
        f.write(str(stock))
    open(SALES, "w").close()
    with multiprocessing.get_context("fork").Pool(16) as pool:
        sold = pool.map(buy, range(16), chunksize=1)
    print(sum(sold), len(open(SALES).read().split()), open(STOCK).read(), flush=True)
"""


def sale(url, lock_dir, use_lock: bool):
    p = python_child(SALE, url, str(lock_dir), "3", "lock" if use_lock else "nolock")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    sold, recorded, left = out.split()
    return int(sold), int(recorded), int(left)


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_with_the_lock_exactly_the_stock_is_sold(request, url, lock_dir, backend):
    lock_url = url if backend == "file" else request.getfixturevalue("redis_url")
    assert sale(lock_url, lock_dir, True) == (3, 3, 0)


def test_without_the_lock_they_oversell(url, lock_dir):
    sold, recorded, _ = sale(url, lock_dir, False)
    assert sold == recorded and sold > 3
