"""Test order: the slowest files first, so that with `-n 2 --dist loadfile` (./run_tests.sh) neither
process is left with a long file at the end while the other idles."""

SLOWEST_FIRST = ("test_notebooks.py", "test_jax_backend.py", "test_interrupts.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)  # stable: the order within each file and among the others is kept
