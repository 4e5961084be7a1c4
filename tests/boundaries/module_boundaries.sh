#!/usr/bin/env bash
# The privacy core and the kernels stay free of MPI, HDF5 and the modules built on them
# (docs/design.md, "Module map"): src/{core,nn,privacy} and include/dpmpi/{core,nn,privacy} include only
# the C library, BLAS, FFTW and headers of core, nn, privacy. The build enforces the system headers too
# (those libraries get no MPI or HDF5 include directory: see the probe tests in tests/CMakeLists.txt);
# this check also catches a project header that would pull them in.
# Usage: bash tests/boundaries/module_boundaries.sh SOURCE_DIR
src=${1:?source dir}
bad=0
for mod in core nn privacy; do
  allowed="core"
  [ $mod = nn ] && allowed="core|nn"
  [ $mod = privacy ] && allowed="core|privacy"
  for f in $(find "$src/src/$mod" "$src/include/dpmpi/$mod" -name '*.[ch]'); do
    while IFS= read -r line; do
      inc=$(echo "$line" | sed -E 's/^#include [<"]([^>"]+)[>"].*/\1/')
      case "$inc" in
        mpi.h|hdf5.h|H5*|ini.h|zlib.h) echo "$f: includes <$inc> (not allowed in $mod/)"; bad=1; continue ;;
      esac
      case "$line" in *'"'*) ;; *) continue ;; esac # <system headers>: only the list above is forbidden
      case "$inc" in
        dpmpi/*) echo "$inc" | grep -qE "^dpmpi/($allowed)/" || { echo "$f: includes \"$inc\" ($mod/ may use only $allowed)"; bad=1; } ;;
        */*) echo "${inc%%/*}" | grep -qE "^($allowed)$" || { echo "$f: includes \"$inc\""; bad=1; } ;;
      esac
    done < <(grep -E '^#include' "$f")
  done
done
[ $bad = 0 ] && echo "module boundaries: core, nn and privacy include no MPI, HDF5 or higher module"
exit $bad
