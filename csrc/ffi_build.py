"""Generate the cffi C source of ``streamsock._native._core`` from ``streamsock.h``.

Build input only (run by CMakeLists.txt), never shipped. The header is the FFI
contract: every line starting with '#' is dropped and the rest is the cdef.
"""
import argparse
import pathlib

import cffi


def make_ffi(header: pathlib.Path) -> cffi.FFI:
    cdef = "\n".join(
        line for line in header.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    ffi = cffi.FFI()
    ffi.cdef(cdef)
    ffi.set_source("streamsock._native._core", '#include "streamsock.h"\n')
    return ffi


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("header", type=pathlib.Path)
    parser.add_argument("output", type=pathlib.Path)
    args = parser.parse_args()
    make_ffi(args.header).emit_c_code(str(args.output))


if __name__ == "__main__":
    main()
