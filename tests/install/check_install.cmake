# Run by tests/install/CMakeLists.txt: cmake -DMODE=install|package -DBUILD_DIR=... -DWORK_DIR=...
#   -DVERSION=... -DLIBDIR=... -DPLUGINDIR=... -DEXAMPLESDIR=... -DPLUGIN_FILES=a.so,b.so
#   [-DCPACK=...] -P check_install.cmake
cmake_minimum_required(VERSION 3.25)

foreach(_var MODE BUILD_DIR WORK_DIR VERSION LIBDIR PLUGINDIR EXAMPLESDIR)
  if(NOT DEFINED ${_var} OR "${${_var}}" STREQUAL "")
    message(FATAL_ERROR "check_install.cmake: -D${_var}= is required")
  endif()
endforeach()
string(REPLACE "," ";" PLUGIN_FILES "${PLUGIN_FILES}")

# Paths every install must contain, relative to the prefix.
set(expected
  bin/glm-proxy
  etc/glm-proxy/glm-proxy.toml
  ${EXAMPLESDIR}/minimal.toml
  ${EXAMPLESDIR}/full.toml
  include/glmproxy/plugin_api.h
  include/glmproxy/sdk.hpp
  ${LIBDIR}/cmake/GlmProxySDK/GlmProxySDKConfig.cmake
  ${LIBDIR}/cmake/GlmProxySDK/GlmProxySDKFunctions.cmake)
foreach(_f IN LISTS PLUGIN_FILES)
  list(APPEND expected ${PLUGINDIR}/${_f})
endforeach()

function(run)  # run(<what> <cmd>...): fails the test unless the command exits 0; sets OUT
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 60)
  if(NOT rc STREQUAL "0")
    list(JOIN ARGN " " cmd)
    message(FATAL_ERROR "FAILED (${rc}): ${cmd}\n--- stdout:\n${out}\n--- stderr:\n${err}")
  endif()
  set(OUT "${out}${err}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

if(MODE STREQUAL "install")
  set(prefix "${WORK_DIR}/prefix")
  run(${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${prefix}")
  foreach(_rel IN LISTS expected)
    if(NOT EXISTS "${prefix}/${_rel}")
      message(FATAL_ERROR "missing after install: ${prefix}/${_rel}")
    endif()
  endforeach()
  # No SDK example (header_stamp*) or test plugin may end up in the product plugin dir.
  file(GLOB _installed_plugins RELATIVE "${prefix}/${PLUGINDIR}" "${prefix}/${PLUGINDIR}/*")
  list(SORT _installed_plugins)
  set(_want ${PLUGIN_FILES})
  list(SORT _want)
  if(NOT "${_installed_plugins}" STREQUAL "${_want}")
    message(FATAL_ERROR "${prefix}/${PLUGINDIR} holds [${_installed_plugins}], expected [${_want}]")
  endif()

  run("${prefix}/bin/glm-proxy" --version)
  if(NOT OUT MATCHES "${VERSION}")
    message(FATAL_ERROR "glm-proxy --version does not mention ${VERSION}: ${OUT}")
  endif()
  foreach(_conf etc/glm-proxy/glm-proxy.toml ${EXAMPLESDIR}/minimal.toml ${EXAMPLESDIR}/full.toml)
    run("${prefix}/bin/glm-proxy" --check-config "${prefix}/${_conf}")
  endforeach()
  # The shipped config's plugins (auth) are found in the installed plugin dir and load.
  run("${prefix}/bin/glm-proxy" --check-plugins "${prefix}/etc/glm-proxy/glm-proxy.toml")

  # A second install over a locally edited config keeps the edit.
  file(APPEND "${prefix}/etc/glm-proxy/glm-proxy.toml" "# local edit\n")
  run(${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${prefix}")
  file(READ "${prefix}/etc/glm-proxy/glm-proxy.toml" _conf_text)
  if(NOT _conf_text MATCHES "# local edit" OR NOT EXISTS "${prefix}/etc/glm-proxy/glm-proxy.toml.default")
    message(FATAL_ERROR "reinstall overwrote the edited config or did not write glm-proxy.toml.default")
  endif()
  message(STATUS "install.prefix OK: ${prefix}")

elseif(MODE STREQUAL "package")
  if(NOT CPACK)
    message(FATAL_ERROR "check_install.cmake: -DCPACK= is required for MODE=package")
  endif()
  run("${CPACK}" -G TGZ --config "${BUILD_DIR}/CPackConfig.cmake" -B "${WORK_DIR}")
  file(GLOB _archives "${WORK_DIR}/*.tar.gz")
  list(LENGTH _archives _n)
  if(NOT _n EQUAL 1)
    message(FATAL_ERROR "expected one .tar.gz in ${WORK_DIR}, found: ${_archives}")
  endif()
  run(${CMAKE_COMMAND} -E tar tf "${_archives}")
  foreach(_rel IN LISTS expected)
    if(NOT OUT MATCHES "/${_rel}\n")
      message(FATAL_ERROR "${_archives} lacks <top>/${_rel}; listing:\n${OUT}")
    endif()
  endforeach()
  file(REMOVE_RECURSE "${WORK_DIR}/_CPack_Packages")
  message(STATUS "package.smoke OK: ${_archives}")
else()
  message(FATAL_ERROR "check_install.cmake: unknown MODE ${MODE}")
endif()
