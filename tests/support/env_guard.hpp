#pragma once
// Sets (or unsets, with nullptr) an environment variable for the lifetime of the guard; the old
// value comes back at the end. For unit tests of code that reads the environment.
#include <cstdlib>
#include <optional>
#include <string>

namespace glmp::test {

class EnvGuard {
public:
  EnvGuard(std::string name, const char* value) : name_(std::move(name)) {
    if (const char* old = std::getenv(name_.c_str())) old_ = std::string(old);
    if (value) ::setenv(name_.c_str(), value, 1);
    else ::unsetenv(name_.c_str());
  }
  ~EnvGuard() {
    if (old_) ::setenv(name_.c_str(), old_->c_str(), 1);
    else ::unsetenv(name_.c_str());
  }
  EnvGuard(const EnvGuard&) = delete;
  EnvGuard& operator=(const EnvGuard&) = delete;

private:
  std::string name_;
  std::optional<std::string> old_;
};

}  // namespace glmp::test
