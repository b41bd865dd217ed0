# GLMP_SANITIZE=address -> ASan+UBSan; GLMP_SANITIZE=thread -> TSan. Applied to every target.
# -fno-sanitize=enum: Poco's HTTPResponse keeps any received status code (e.g. 529) in its HTTPStatus
# enum and returns it from an inline getter; that load is flagged although every compiler treats the
# enum as an int. Everything else in UBSan stays fatal.
if(GLMP_SANITIZE STREQUAL "address")
  add_compile_options(-fsanitize=address,undefined -fno-sanitize=enum -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
elseif(GLMP_SANITIZE STREQUAL "thread")
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer)
  add_link_options(-fsanitize=thread)
elseif(NOT GLMP_SANITIZE STREQUAL "")
  message(FATAL_ERROR "GLMP_SANITIZE must be '', 'address' or 'thread', not '${GLMP_SANITIZE}'")
endif()
