// SharedBytes is part of the public client API; it lives in include/testudo/shared_bytes.h.
#pragma once
#include "testudo/shared_bytes.h"
