# The controller's persistent task store (SQLite). Included by src/controller/CMakeLists.txt.
testudo_library(task_store SOURCES task_store.cc store_format.cc DEPS testudo::base PRIVATE_DEPS SQLite::SQLite3 Threads::Threads)
testudo_test(task_store_test SOURCES task_store_test.cc DEPS testudo::task_store)
testudo_test(store_format_test SOURCES store_format_test.cc DEPS testudo::task_store SQLite::SQLite3)
