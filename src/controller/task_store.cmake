# The controller's persistent task store (SQLite). Included by src/controller/CMakeLists.txt.
testudo_library(task_store SOURCES task_store.cc store_format.cc DEPS testudo::base PRIVATE_DEPS SQLite::SQLite3 Threads::Threads)
testudo_test(task_store_test SOURCES task_store_test.cc DEPS testudo::task_store)
testudo_test(store_format_test SOURCES store_format_test.cc DEPS testudo::task_store SQLite::SQLite3)
if(TESTUDO_TESTS)
  # Writes a fixture of the current format: make_task_store_fixture tests/fixtures/store-v<N>
  # (docs/formats.md). task_store_test reads every fixture kept there.
  add_executable(make_task_store_fixture make_task_store_fixture.cc)
  target_link_libraries(make_task_store_fixture PRIVATE testudo::task_store)
  target_compile_definitions(task_store_test PRIVATE TESTUDO_FIXTURES_DIR="${PROJECT_SOURCE_DIR}/tests/fixtures")
endif()
