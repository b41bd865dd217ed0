# The out-of-tree plugin flow, as a plugin author runs it:
#   cmake --install <build> --component sdk --prefix <work>/prefix
#   cmake -S sdk/template -B <work>/build -DCMAKE_PREFIX_PATH=<work>/prefix
#   cmake --build <work>/build && ctest --test-dir <work>/build
# Run by ctest (sdk.template) with -DBUILD_DIR -DWORK_DIR -DTEMPLATE_DIR -DGENERATOR -DCXX_COMPILER -DCTEST.
foreach(var BUILD_DIR WORK_DIR TEMPLATE_DIR GENERATOR CXX_COMPILER CTEST)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "template_out_of_tree.cmake: -D${var}=... is required")
  endif()
endforeach()

function(run)
  string(REPLACE ";" " " printable "${ARGN}")
  message(STATUS "+ ${printable}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${printable}")
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
run(${CMAKE_COMMAND} --install "${BUILD_DIR}" --component sdk --prefix "${WORK_DIR}/prefix")
run(${CMAKE_COMMAND} -S "${TEMPLATE_DIR}" -B "${WORK_DIR}/build" -G "${GENERATOR}"
    "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix" -DCMAKE_BUILD_TYPE=Release
    "-DCMAKE_CXX_FLAGS=-Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Werror")
run(${CMAKE_COMMAND} --build "${WORK_DIR}/build")
run(${CTEST} --test-dir "${WORK_DIR}/build" --output-on-failure)

# Finally, the real proxy loads the out-of-tree plugin: --check-plugins builds the chain from a
# config that names it (load, ABI checks, on_config_new, unload).
if(DEFINED PROXY_BIN)
  file(WRITE "${WORK_DIR}/proxy.toml"
       "[upstreams.u]\nbase_url = \"http://127.0.0.1:9\"\n"
       "[[routes]]\nprefix = \"/v1/\"\nflavour = \"openai\"\nupstream = \"u\"\n"
       "[[plugins]]\nname = \"my_plugin\"\npath = \"${WORK_DIR}/build/my_plugin.so\"\n")
  message(STATUS "+ ${PROXY_BIN} --check-plugins ${WORK_DIR}/proxy.toml")
  execute_process(COMMAND "${PROXY_BIN}" --check-plugins "${WORK_DIR}/proxy.toml"
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0 OR NOT out MATCHES "my_plugin 0\\.1\\.0 abi")
    message(FATAL_ERROR "glm-proxy did not load the out-of-tree plugin (${rc}):\n${out}${err}")
  endif()
  message(STATUS "${out}")
endif()
