# Compiles through ccache when it is installed (scripts/bootstrap installs it). Objects are
# keyed by the preprocessed source and the flags, with paths taken relative to the checkout,
# so a fresh clone anywhere on the machine recompiles only what it changed.
find_program(VESSEL_CCACHE ccache)
if(VESSEL_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  cmake_path(GET CMAKE_CURRENT_LIST_DIR PARENT_PATH vessel_checkout)
  set(CMAKE_CXX_COMPILER_LAUNCHER
      ${CMAKE_COMMAND} -E env CCACHE_BASEDIR=${vessel_checkout} CCACHE_NOHASHDIR=1
      ${VESSEL_CCACHE})
endif()
