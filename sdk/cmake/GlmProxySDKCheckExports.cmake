# cmake -DNM=<nm> -DPLUGIN=<file.so> -P GlmProxySDKCheckExports.cmake
# Fails unless the plugin's dynamic symbol table defines exactly one symbol, glmp_plugin_init (a
# function), and no STB_GNU_UNIQUE symbol (which would keep glibc from ever unloading it).
# Used by glmp_add_plugin_export_test().
if(NOT NM OR NOT PLUGIN)
  message(FATAL_ERROR "usage: cmake -DNM=<nm> -DPLUGIN=<file.so> -P ${CMAKE_CURRENT_LIST_FILE}")
endif()
execute_process(COMMAND "${NM}" -D --defined-only "${PLUGIN}"
                OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${NM} -D --defined-only ${PLUGIN} failed (${rc}): ${err}")
endif()
string(REGEX REPLACE "\n$" "" out "${out}")
string(REPLACE "\n" ";" lines "${out}")
set(exported "")
set(bad "")
foreach(line IN LISTS lines)
  if(line MATCHES "^[0-9a-fA-F]* *([A-Za-z]) (.+)$")
    list(APPEND exported "${CMAKE_MATCH_2}")
    if(NOT (CMAKE_MATCH_1 STREQUAL "T" AND CMAKE_MATCH_2 STREQUAL "glmp_plugin_init"))
      list(APPEND bad "${line}")
    endif()
  endif()
endforeach()
if(bad OR NOT exported STREQUAL "glmp_plugin_init")
  message(FATAL_ERROR "${PLUGIN} must export only the function glmp_plugin_init; nm -D --defined-only shows:\n${out}")
endif()
message(STATUS "${PLUGIN}: exports only glmp_plugin_init")
