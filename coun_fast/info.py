"""``python -m coun_fast.info``: print what this installation can do (see coun_fast.capabilities)."""

from coun_fast.capabilities import main

if __name__ == "__main__":
    main()
