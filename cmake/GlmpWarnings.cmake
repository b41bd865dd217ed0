# glmp_set_warnings(target): the project's warning set; -Werror when GLMP_WERROR is ON (CI).
function(glmp_set_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor
                                           -Wno-missing-field-initializers)
  if(GLMP_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()
