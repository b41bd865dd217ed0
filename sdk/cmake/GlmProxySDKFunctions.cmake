# glmp_add_plugin(): build a GLM Proxy plugin. One file for both uses:
#   - in tree: sdk/CMakeLists.txt includes it (plugins land in ${GLMP_PLUGIN_OUTPUT_DIRECTORY});
#   - installed: GlmProxySDKConfig.cmake includes it (find_package(GlmProxySDK)).
#
#   glmp_add_plugin(<name> [OUTPUT_NAME <file-stem>] [INSTALL_DESTINATION <dir>] [SOURCES] <src>...)
#
# Creates a MODULE library target <name> whose file is <file-stem>.so (default: <name>.so, no
# "lib" prefix), the file name the core looks for in its plugin directory. The target:
#   - links GlmProxySDK::sdk (plugin_api.h, sdk.hpp, C++20);
#   - compiles with -fvisibility=hidden -fvisibility-inlines-hidden, position-independent code, and
#     (GCC) -fno-gnu-unique: without it, a static in an inline function or template becomes a
#     STB_GNU_UNIQUE symbol and glibc never unloads the library, which breaks hot reload;
#   - links with a version script exporting only glmp_plugin_init, and (GCC) -z defs, so a plugin
#     that relies on symbols of the host process fails at link time, not at load time;
#   - gets the project's warnings when glmp_set_warnings() exists (in tree);
#   - is written to ${GLMP_PLUGIN_OUTPUT_DIRECTORY} when that variable is set;
#   - is installed to <dir> when INSTALL_DESTINATION is given.
#
#   glmp_add_plugin_export_test(<target> [NAME <test-name>])
#
# Registers a CTest test (default name <target>.exports) that fails unless the built plugin exports
# exactly glmp_plugin_init and no STB_GNU_UNIQUE symbol. Needs enable_testing() and CMAKE_NM.
include_guard(GLOBAL)

function(glmp_add_plugin name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "OUTPUT_NAME;INSTALL_DESTINATION" "SOURCES")
  set(sources ${arg_SOURCES} ${arg_UNPARSED_ARGUMENTS})
  if(NOT sources)
    message(FATAL_ERROR "glmp_add_plugin(${name}): no source files")
  endif()
  if(NOT TARGET GlmProxySDK::sdk)
    message(FATAL_ERROR "glmp_add_plugin(${name}): target GlmProxySDK::sdk is not defined; "
                        "call find_package(GlmProxySDK) (or add_subdirectory(sdk) in the GLM Proxy tree) first")
  endif()
  if(NOT arg_OUTPUT_NAME)
    set(arg_OUTPUT_NAME ${name})
  endif()

  add_library(${name} MODULE ${sources})
  target_link_libraries(${name} PRIVATE GlmProxySDK::sdk)
  set_target_properties(${name} PROPERTIES
    PREFIX ""
    OUTPUT_NAME ${arg_OUTPUT_NAME}
    SUFFIX ".so"
    POSITION_INDEPENDENT_CODE ON
    C_VISIBILITY_PRESET hidden
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  target_compile_options(${name} PRIVATE $<$<COMPILE_LANG_AND_ID:CXX,GNU>:-fno-gnu-unique>)

  if(UNIX AND NOT APPLE)
    set(map "${CMAKE_CURRENT_FUNCTION_LIST_DIR}/glmp_plugin.map")
    target_link_options(${name} PRIVATE "LINKER:--version-script=${map}")
    set_property(TARGET ${name} APPEND PROPERTY LINK_DEPENDS "${map}")
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
      target_link_options(${name} PRIVATE "LINKER:-z,defs")
    endif()
  endif()

  if(COMMAND glmp_set_warnings)
    glmp_set_warnings(${name})
  endif()
  if(GLMP_PLUGIN_OUTPUT_DIRECTORY)
    set_target_properties(${name} PROPERTIES LIBRARY_OUTPUT_DIRECTORY "${GLMP_PLUGIN_OUTPUT_DIRECTORY}")
  endif()
  if(arg_INSTALL_DESTINATION)
    install(TARGETS ${name} LIBRARY DESTINATION "${arg_INSTALL_DESTINATION}")
  endif()
endfunction()

function(glmp_add_plugin_export_test target)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "NAME" "")
  if(NOT arg_NAME)
    set(arg_NAME ${target}.exports)
  endif()
  if(NOT CMAKE_NM)
    message(FATAL_ERROR "glmp_add_plugin_export_test(${target}): CMAKE_NM is not set (no nm found)")
  endif()
  add_test(NAME ${arg_NAME}
           COMMAND ${CMAKE_COMMAND} -DNM=${CMAKE_NM} -DPLUGIN=$<TARGET_FILE:${target}>
                   -P ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/GlmProxySDKCheckExports.cmake)
endfunction()
