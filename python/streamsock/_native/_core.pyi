# The cffi extension built from csrc/streamsock.h (CMakeLists.txt). cffi
# describes C objects at run time, so its values are typed Any here; the
# modules of _native turn them into Python types at the edge.
from typing import Any

ffi: Any
lib: Any
