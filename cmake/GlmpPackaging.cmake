# Install layout and packaging (CPack: TGZ and DEB). Included from the top-level CMakeLists.txt
# after add_subdirectory(sdk), before add_subdirectory(plugins).
#
# Layout under the install prefix P (`cmake --install build --prefix P`):
#   P/bin/glm-proxy                              (core/CMakeLists.txt)
#   P/lib/glm-proxy/plugins/<name>.so            product plugins (plugins/CMakeLists.txt)
#   P/include/glmproxy/, P/lib/cmake/GlmProxySDK  plugin SDK, component "sdk" (sdk/CMakeLists.txt)
#   P/etc/glm-proxy/glm-proxy.toml               default config; for P = /usr (the .deb) it goes to
#                                                /etc/glm-proxy/ (FHS; dpkg conffile)
#   P/share/glm-proxy/examples/{minimal,full}.toml  reference configs, never edited in place
include_guard(GLOBAL)
include(GNUInstallDirs)

set(GLMP_INSTALL_PLUGINDIR "lib/glm-proxy/plugins" CACHE STRING
    "Where product plugins are installed, relative to the prefix (the core looks in <bin>/../lib/glm-proxy/plugins)")
set(GLMP_INSTALL_EXAMPLESDIR "${CMAKE_INSTALL_DATADIR}/glm-proxy/examples" CACHE STRING
    "Where the example configs (minimal.toml, full.toml) are installed, relative to the prefix")

# --- default config ------------------------------------------------------------------------------
# Decided at install time, because the prefix is only known then: prefix /usr -> /etc/glm-proxy
# (the GNUInstallDirs rule for /usr, which is what cpack -G DEB installs to), otherwise
# <prefix>/etc/glm-proxy. An existing config that differs is left alone (an operator's edits
# survive `cmake --install`); the default is then installed next to it as glm-proxy.toml.default.
install(CODE "
  if(CMAKE_INSTALL_PREFIX STREQUAL \"/usr\")
    set(_glmp_confdir \"/etc/glm-proxy\")
  else()
    set(_glmp_confdir \"\${CMAKE_INSTALL_PREFIX}/etc/glm-proxy\")
  endif()
  set(_glmp_conf_src \"${PROJECT_SOURCE_DIR}/config/glm-proxy.toml\")
  set(_glmp_conf_dst \"\$ENV{DESTDIR}\${_glmp_confdir}/glm-proxy.toml\")
  set(_glmp_conf_name glm-proxy.toml)
  if(EXISTS \"\${_glmp_conf_dst}\")
    file(SHA256 \"\${_glmp_conf_src}\" _glmp_a)
    file(SHA256 \"\${_glmp_conf_dst}\" _glmp_b)
    if(NOT _glmp_a STREQUAL _glmp_b)
      message(STATUS \"Keeping modified: \${_glmp_conf_dst} (default installed as glm-proxy.toml.default)\")
      set(_glmp_conf_name glm-proxy.toml.default)
    endif()
  endif()
  file(INSTALL DESTINATION \"\${_glmp_confdir}\" TYPE FILE RENAME \${_glmp_conf_name} FILES \"\${_glmp_conf_src}\")
")
install(FILES ${PROJECT_SOURCE_DIR}/config/minimal.toml ${PROJECT_SOURCE_DIR}/config/full.toml
        DESTINATION ${GLMP_INSTALL_EXAMPLESDIR})

# --- CPack ---------------------------------------------------------------------------------------
# From the build dir: cpack -G DEB, cpack -G TGZ (or plain `cpack`: both).
set(CPACK_GENERATOR "TGZ;DEB")
set(CPACK_PACKAGE_NAME "glm-proxy")
set(CPACK_PACKAGE_VENDOR "GLM Proxy")
set(CPACK_PACKAGE_VERSION "${PROJECT_VERSION}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "GLM Proxy: C++ LLM gateway with native hot-reloadable plugins")
string(CONCAT CPACK_PACKAGE_DESCRIPTION
    "An HTTP gateway in front of OpenAI- and Anthropic-compatible LLM APIs (Z.ai GLM by default): "
    "connection pooling, streaming relay, usage accounting and Prometheus metrics, extended by "
    "native plugins (C ABI) that are hot-reloaded. Ships the plugin SDK (headers + CMake package).")
set(CPACK_PACKAGE_CONTACT "GLM Proxy maintainers <glm-proxy@localhost>")
set(CPACK_RESOURCE_FILE_README "${PROJECT_SOURCE_DIR}/README.md")
set(CPACK_STRIP_FILES ON)
set(CPACK_VERBATIM_VARIABLES ON)
set(CPACK_PACKAGE_FILE_NAME "glm-proxy-${PROJECT_VERSION}-${CMAKE_SYSTEM_NAME}-${CMAKE_SYSTEM_PROCESSOR}")

# DEB (installs under /usr; config in /etc/glm-proxy, see above).
set(CPACK_DEBIAN_PACKAGE_NAME "glm-proxy")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)          # glm-proxy_<version>_<arch>.deb
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${CPACK_PACKAGE_CONTACT}")
set(CPACK_DEBIAN_PACKAGE_SECTION "net")
set(CPACK_DEBIAN_PACKAGE_PRIORITY "optional")
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://localhost/glm-proxy")
# /etc/glm-proxy/glm-proxy.toml is a conffile: dpkg keeps (and asks about) local edits on upgrade.
file(WRITE ${PROJECT_BINARY_DIR}/cpack-debian/conffiles "/etc/glm-proxy/glm-proxy.toml\n")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${PROJECT_BINARY_DIR}/cpack-debian/conffiles)
# Depends from dpkg-shlibdeps (libpoco*80, libtomlplusplus3, libboost-filesystem1.74.0, libstdc++6,
# libc6 with versions; prometheus-cpp is linked statically here, so it is absent) when available;
# otherwise the list below.
find_program(GLMP_DPKG_SHLIBDEPS dpkg-shlibdeps)
mark_as_advanced(GLMP_DPKG_SHLIBDEPS)
if(GLMP_DPKG_SHLIBDEPS)
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
else()
  string(CONCAT CPACK_DEBIAN_PACKAGE_DEPENDS
      "libpocofoundation80, libpoconet80, libpoconetssl80, libpococrypto80, libpocoutil80, libpocojson80, "
      "libpocoxml80, libtomlplusplus3, libprometheus-cpp-core1.0, libboost-filesystem1.74.0")
endif()

include(CPack)
